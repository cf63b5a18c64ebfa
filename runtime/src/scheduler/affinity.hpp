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
// Mechanism:
//  - each registered descriptor has a home worker (IoHome): a new connection
//    (connect, accept) gets the worker with the fewest connections, so
//    connections spread over the workers; the accepted end of an in-process
//    loopback connection shares the home of its client (the reactor keeps a
//    table of loopback clients by local port), so a round trip between the
//    two stays on one core. Other descriptors (listeners, UDP, AsyncFd) are
//    homed on the worker that registered them;
//  - any worker whose tasks ran out harvests ready I/O itself (it need not
//    wait for the worker sleeping in the driver), and the reactor sets
//    tl_wake_home while it wakes a descriptor's waiters; the multi-thread
//    scheduler then puts the task in the home worker's inbox (drained into
//    its local queue every tick, so stealing still balances load) instead of
//    the harvesting worker's queue;
//  - a stolen task runs on the thief until it waits; its next wake-up brings
//    it home. Homes never move: re-homing on each wait let every connection
//    collapse onto whichever worker stayed awake;
//  - if the home worker is asleep, waking it would put a cross-core wake-up
//    on the latency path: that one wake runs on the harvesting worker.
#pragma once

namespace tideloop::internal {

inline constexpr int kNoHome = -1;

// The index of the multi-thread worker running on this thread, or kNoHome.
inline thread_local int tl_worker_index = kNoHome;
// Set by the reactor around the wakes of one descriptor: its home worker.
inline thread_local int tl_wake_home = kNoHome;

}  // namespace tideloop::internal
