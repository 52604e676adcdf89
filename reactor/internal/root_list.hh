#pragma once
// The executor's list of live root tasks (those started by spawn()), so that
// shutdown can destroy every suspended coroutine chain. Intrusive and O(1):
// a server may hold a hundred thousand connection tasks.

#include <coroutine>
#include <cstddef>

namespace shardd::internal {

struct root_node {
    root_node* prev = nullptr;
    root_node* next = nullptr;
    std::coroutine_handle<> handle;
};

class root_list {
public:
    void push(root_node* n) noexcept {
        n->prev = nullptr;
        n->next = _head;
        if (_head) {
            _head->prev = n;
        }
        _head = n;
        ++_size;
    }
    void erase(root_node* n) noexcept {
        (n->prev ? n->prev->next : _head) = n->next;
        if (n->next) {
            n->next->prev = n->prev;
        }
        n->prev = n->next = nullptr;
        --_size;
    }
    std::size_t size() const noexcept { return _size; }
    // Destroys every listed coroutine frame (and, through their task<T>
    // members, every frame they await). Newest first: a task outlives the
    // tasks it spawned, so what it owns and lends them (a buffer ring, a
    // connection list) is still there while their frames are destroyed.
    void destroy_all() noexcept {
        while (_head) {
            root_node* n = _head;
            erase(n);
            n->handle.destroy();
        }
    }

private:
    root_node* _head = nullptr;
    std::size_t _size = 0;
};

}  // namespace shardd::internal
