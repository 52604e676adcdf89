#include "reactor/shard_mesh.hh"

#include <cassert>

namespace shardd {

namespace {
thread_local shard_mesh* t_mesh = nullptr;
thread_local unsigned t_shard = 0;
}  // namespace

shard_mesh* shard_mesh::current() noexcept { return t_mesh; }
unsigned this_shard_id() noexcept { return t_shard; }
std::size_t shard_count() noexcept { return t_mesh ? t_mesh->size() : 1; }

class shard_mesh::inbox final : public work_source {
public:
    inbox(shard_mesh& mesh, unsigned id) : _mesh(mesh), _id(id) {}
    bool poll() override {
        const bool sent = _mesh.flush_backlog(_id);
        return _mesh.drain_inbox(_id) || sent;
    }
    bool has_work() const override { return _mesh.inbox_has_work(_id); }

private:
    shard_mesh& _mesh;
    unsigned _id;
};

shard_mesh::shard_mesh(std::size_t shards, std::size_t queue_capacity)
    : _shards(shards), _executors(shards, nullptr), _inboxes(shards), _backlog(shards) {
    _queues.resize(shards * shards);
    _sender_waiting = std::make_unique<waiting_flag[]>(shards * shards);
    for (std::size_t from = 0; from < shards; ++from) {
        _backlog[from].resize(shards);
        for (std::size_t to = 0; to < shards; ++to) {
            if (from != to) {
                _queues[from * shards + to] = std::make_unique<spsc_queue<shard_message>>(queue_capacity);
            }
        }
    }
}

shard_mesh::~shard_mesh() = default;

void shard_mesh::attach(unsigned id, executor& ex) {
    assert(id < _shards);
    _executors[id] = &ex;
    _inboxes[id] = std::make_unique<inbox>(*this, id);
    ex.add_work_source(_inboxes[id].get());
    t_mesh = this;
    t_shard = id;
}

void shard_mesh::send(unsigned to, shard_message msg) {
    const unsigned from = t_shard;
    assert(to < _shards && to != from);
    auto& backlog = _backlog[from][to];
    // Keep order: once something waits in the backlog, new messages queue
    // behind it.
    if (!backlog.empty() || !queue(from, to).push(std::move(msg))) {
        backlog.push_back(msg);
        return;
    }
    _executors[to]->wake();
}

bool shard_mesh::flush_backlog(unsigned from) {
    bool sent = false;
    for (unsigned to = 0; to < _shards; ++to) {
        auto& backlog = _backlog[from][to];
        bool pushed = false;
        while (!backlog.empty() && queue(from, to).push(shard_message(backlog.front()))) {
            backlog.pop_front();
            pushed = true;
        }
        if (pushed) {
            _executors[to]->wake();
            sent = true;
        }
    }
    return sent;
}

std::size_t shard_mesh::backlog() const {
    std::size_t n = 0;
    for (const auto& b : _backlog[t_shard]) {
        n += b.size();
    }
    return n;
}

bool shard_mesh::drain_inbox(unsigned to) {
    bool any = false;
    for (unsigned from = 0; from < _shards; ++from) {
        if (from == to) {
            continue;
        }
        // A bounded batch per source per iteration, so one chatty shard does
        // not starve the others or the local tasks.
        bool popped = false;
        for (int i = 0; i < 256; ++i) {
            auto msg = queue(from, to).pop();
            if (!msg) {
                break;
            }
            msg->fn(msg->arg);
            popped = true;
        }
        // The queue has room again: wake its sender if it sleeps on a
        // backlog. An RMW after our pops (release stores of the head),
        // against the sender's RMW before it looks for room: one of the two
        // reads the other, so either it sees the room or we see it waiting.
        if (popped && _sender_waiting[from * _shards + to].value.exchange(0, std::memory_order_acq_rel) != 0) {
            _executors[from]->wake();
        }
        any |= popped;
    }
    return any;
}

bool shard_mesh::inbox_has_work(unsigned to) {
    for (unsigned from = 0; from < _shards; ++from) {
        if (from != to && !_queues[from * _shards + to]->empty()) {
            return true;
        }
    }
    // Our own backlogs: retry now if their queue has room, else sleep and
    // let the receiver wake us (drain_inbox) when it takes something.
    for (unsigned dest = 0; dest < _shards; ++dest) {
        if (_backlog[to][dest].empty()) {
            continue;
        }
        _sender_waiting[to * _shards + dest].value.exchange(1, std::memory_order_acq_rel);
        if (!queue(to, dest).full()) {
            return true;
        }
    }
    return false;
}

}  // namespace shardd
