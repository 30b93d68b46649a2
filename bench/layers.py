#!/usr/bin/env python3
"""Splits a node's CPU samples into layers, for the per-request budget in RESULTS.

Reads `perf script -F comm,tid,ip,sym` of a `perf record --call-graph dwarf -p PID`
profile and, given the run's requests per second and the core's busy share, prints
each layer's share of the samples and its CPU microseconds per request. A sample
goes to the first layer whose rule matches a frame, walking from the leaf toward the
root (so validation inside the handler counts as validation, and the kernel's TCP
work under `writev` as sending the response).

Usage: perf script -i FILE -F comm,tid,ip,sym | bench/layers.py REQ_PER_S BUSY_SHARE
"""
import re
import sys
from collections import Counter

# (layer, regex on a frame's symbol), most specific first, tried leaf to root.
RULES = [
    ("heap profiler sampling (jemalloc prof)", r"prof_backtrace|prof_tctx_create|_Unwind_"),
    ("allocator (jemalloc)", r"^_rjem_|^je_|imalloc|isfree|ifree|tcache"),
    ("fsync (fdatasync)", r"fdatasync"),
    ("file write (pwrite)", r"__libc_pwrite|pwrite64"),
    ("file sink write", r"sluice_pipeline::sinks::file"),
    ("response send (writev: kernel TCP loopback)", r"__GI___writev|__writev"),
    ("request read (recv)", r"__libc_recv|recvfrom"),
    ("cross-thread wake (eventfd/futex)", r"mio::sys::unix::waker::Waker::wake|futex_wake"),
    ("idle/park (epoll_wait, condvar wait)", r"epoll_wait|futex_wait|pthread_cond_wait|Condvar::wait|park_timeout"),
    ("JSON validation", r"sluice_proto::json|sluice_proto::body"),
    ("WAL record encode + append", r"sluice_proto::record::encode|WalQueue as sluice_core::queue::Queue>::append|sluice_wal::wal::Wal::append"),
    ("WAL writer (frames, crc, callbacks)", r"sluice_wal::writer"),
    ("ack handoff", r"sluice_queue::handoff"),
    ("WAL read + decode (processor)", r"sluice_wal::reader|sluice_proto::record::decode|read_records|WalConsumer"),
    ("processor", r"sluice_pipeline"),
    ("metrics", r"prometheus_client|sluice_server::metrics"),
    ("ingest handler (rest)", r"sluice_server::http::ingest|sluice_server::front|sluice_server::auth"),
    ("connection watchdog", r"sluice_server::http::serve_conn|sluice_server::http::Activity|Tracked"),
    ("hyper (parse, encode, dispatch)", r"^hyper::|^<hyper|hyper_util|^http::"),
    ("tokio runtime (scheduling, timers, I/O driver)", r"^tokio::|^<tokio|mio::"),
]
COMPILED = [(name, re.compile(rx)) for name, rx in RULES]


def samples(lines):
    head, frames = None, []
    for line in lines:
        if not line.strip():
            if head is not None:
                yield head[0], head[1], frames
            head, frames = None, []
            continue
        if not line.startswith(("\t", " ")):
            head, frames = line.split()[:2], []
            continue
        parts = line.strip().split(None, 1)
        frames.append(parts[1] if len(parts) > 1 else "")
    if head is not None:
        yield head[0], head[1], frames


def classify(frames):
    for f in frames:
        for name, rx in COMPILED:
            if rx.search(f):
                return name
    if frames and all(not f or f == "[unknown]" or re.match(r"^[a-z_0-9.]+$", f) for f in frames):
        return "kernel (interrupts, scheduling, softirq)"
    return "other"


def main():
    rps, busy = float(sys.argv[1]), float(sys.argv[2])
    by_layer, by_thread, total = Counter(), Counter(), 0
    all_samples = list(samples(sys.stdin))
    # tokio starts its workers on the blocking pool too: a thread is a runtime
    # worker if any of its stacks runs the multi-thread scheduler.
    workers = {tid for comm, tid, frames in all_samples
               if any("multi_thread::worker" in f for f in frames)}
    for comm, tid, frames in all_samples:
        thread = {"sluice-wal-writ": "WAL writer", "sluice-processo": "processor"}.get(comm)
        if thread is None:
            thread = "runtime worker" if tid in workers else "blocking pool"
        layer = classify(frames)
        by_layer[(thread, layer)] += 1
        by_thread[thread] += 1
        total += 1
    us = busy * 1e6 / rps  # CPU microseconds per request, all threads
    print(f"{total} samples; {rps:.0f} req/s at {100 * busy:.0f} % of the core = {us:.1f} us CPU per request")
    print(f"| thread | layer | share of samples | us per request |")
    print(f"|---|---|---|---|")
    for thread, n in by_thread.most_common():
        print(f"| **{thread}** | (all) | {100 * n / total:.1f} % | {us * n / total:.2f} |")
        for (t, layer), m in by_layer.most_common():
            if t == thread and m / total >= 0.003:
                print(f"| | {layer} | {100 * m / total:.1f} % | {us * m / total:.2f} |")


if __name__ == "__main__":
    main()
