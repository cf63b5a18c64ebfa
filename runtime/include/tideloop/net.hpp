// Networking for tideloop tasks: TCP, UDP, Unix stream sockets and name
// resolution. See each header for the API; the shared conventions are:
//  - readiness-based: the system call first, a reactor wait only on EAGAIN
//    (tideloop/io.hpp);
//  - errors as Result<T> carrying the errno (tideloop/io/result.hpp), no
//    exceptions on I/O paths, no SIGPIPE;
//  - objects are created inside a runtime with I/O enabled (the default) and
//    belong to that runtime's reactor.
#pragma once

#include "tideloop/io.hpp"
#include "tideloop/net/resolve.hpp"
#include "tideloop/net/stream.hpp"
#include "tideloop/net/tcp.hpp"
#include "tideloop/net/udp.hpp"
#include "tideloop/net/unix.hpp"
