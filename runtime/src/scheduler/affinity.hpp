// I/O affinity: on which worker a task woken by socket readiness runs.
//
// Why: the kernel processes a TCP socket's packets on one CPU (on loopback
// the sender's, with a multi-queue NIC the queue's IRQ/RPS CPU) and touches
// the socket's buffers there. If the task that reads and writes the socket
// runs on a worker on that CPU, the socket, its skbs and its wait queue stay
// in one core's cache; if it runs wherever the reactor happened to be
// harvested (Tokio's rule: a woken task goes to the waking worker), every
// round trip moves them between cores and frees skbs remotely (measured on
// tcp_echo/2, 64 in-process client/server pairs on 2 cores: both workers
// 100% busy, yet no faster than one worker; the kernel profile is dominated
// by cross-core wake-ups and deferred skb frees).
//
// Mechanism (runtime/src/io/reactor.hpp has the reactor side):
//  - each worker has its own socket epoll set. A connection (connect, accept)
//    is registered in the set of the worker with the fewest connections, so
//    connections spread over the workers; the accepted end of an in-process
//    loopback connection joins the set of its other end (the reactor pairs
//    them by the client's port, whichever end registers first), so a round
//    trip between the two stays on one core. Other descriptors (listeners,
//    UDP, AsyncFd) go to the set of the worker that registered them;
//  - a worker harvests its own set whenever its run queue is empty and every
//    event_interval ticks, so the tasks it wakes land on its own queue: a
//    connection's task runs where its events are harvested. A stolen task
//    runs on the thief until it waits; its next wake-up brings it home;
//  - a worker that goes to sleep on its futex arms its set's (one-shot)
//    notification in the driver's epoll set: the worker sleeping in the
//    driver then harvests that set for it (on its own queue: a wake-up of
//    the sleeper would put a cross-core wake on the latency path). Busy
//    workers' sets are never reported to the driver, so events of busy
//    workers cost the sleeping driver no wake-ups.
#pragma once

namespace tideloop::internal {

inline constexpr int kNoHome = -1;

// The index of the multi-thread worker running on this thread, or kNoHome.
inline thread_local int tl_worker_index = kNoHome;

}  // namespace tideloop::internal
