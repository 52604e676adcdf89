#!/bin/sh
# Every C++ file is formatted by the project's .clang-format.
root=${1:?source root}
clang_format=${2:-clang-format}
cd "$root" || exit 1
files=$(find reactor config server tests bench -name '*.cc' -o -name '*.hh' | sort)
# shellcheck disable=SC2086
"$clang_format" --dry-run -Werror $files || {
    echo "run: clang-format -i \$(git ls-files '*.cc' '*.hh')"
    exit 1
}
echo "$(echo "$files" | wc -l) files formatted"
