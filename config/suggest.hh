#pragma once
// "Did you mean" for unknown keys and enum values.

#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace shardd::config {

// Optimal string alignment distance (Levenshtein with transpositions).
std::size_t edit_distance(std::string_view a, std::string_view b);

// The closest candidate, if it is close enough to be a plausible typo: at most
// a third of the word's length in edits (and at least one).
std::optional<std::string> closest(std::string_view word, std::span<const std::string_view> candidates);

}  // namespace shardd::config
