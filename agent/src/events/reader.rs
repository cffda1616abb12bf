//! Reading the kernel's event ring buffer. The kernel does not wake the reader per event
//! (that costs ~1.4 µs each); a timer drains the ring, so events are never older than
//! [`DRAIN_INTERVAL`] when they reach the metrics, or [`BUSY_DRAIN_INTERVAL`] under load.
//! Only a burst that fills the ring past half wakes the reader early.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::{decode, DecodeError, Event};

/// How often the ring is drained while events are few.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// How often it is drained under load: with [`YIELD_EVERY_RECORDS`], a saturated hello-world
/// Go server lost ~12% of its throughput instead of ~16% at 10 ms (docs/benchmarks.md,
/// sixth session).
pub const BUSY_DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// The reader gives way to any other runnable thread on its CPU after this many records (a
/// `sched_yield`, about every 0.1 ms of work), so that a drain of 50 ms of records does
/// not hold the CPU for milliseconds while others wait: in the benchmark, wrk (on the CPU the
/// agent picked) saw its p99 latency at 2.7× without the yields and 1.0× with them, and the
/// throughput loss fell by ~4 points. A service sharing the agent's CPU would wait alike.
pub const YIELD_EVERY_RECORDS: usize = 400;
/// A drain that found at least this many records (100,000 a second at 10 ms) makes the
/// next one wait [`BUSY_DRAIN_INTERVAL`]; one that found fewer, [`DRAIN_INTERVAL`].
pub const BUSY_DRAIN_RECORDS: usize = 1000;

/// The wait before the next drain, given how many records the last one found.
pub fn next_drain(records: usize) -> Duration {
    if records >= BUSY_DRAIN_RECORDS {
        BUSY_DRAIN_INTERVAL
    } else {
        DRAIN_INTERVAL
    }
}

/// Drains the ring buffer forever, handing each record (decoded or not) to `sink`.
pub async fn read_forever<F>(ring: RingBuf<MapData>, mut sink: F) -> std::io::Result<()>
where
    F: FnMut(Result<Event<'_>, DecodeError>),
{
    // SAFETY: the AsyncFd owns the ring buffer, which owns the fd: it stays open for as long
    // as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)? };
    let timer = tokio::time::sleep(DRAIN_INTERVAL);
    tokio::pin!(timer);
    loop {
        let records = tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let records = drain(guard.get_inner_mut(), &mut sink);
                guard.clear_ready();
                records
            }
            _ = timer.as_mut() => drain(fd.get_mut(), &mut sink),
        };
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + next_drain(records));
    }
}

/// Hands every record in the ring to `sink`, giving way to other threads now and then;
/// returns how many records there were.
fn drain<F: FnMut(Result<Event<'_>, DecodeError>)>(
    ring: &mut RingBuf<MapData>,
    sink: &mut F,
) -> usize {
    let mut records = 0;
    while let Some(record) = ring.next() {
        sink(decode(&record));
        records += 1;
        if records % YIELD_EVERY_RECORDS == 0 {
            std::thread::yield_now();
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_less_often_under_load() {
        assert_eq!(next_drain(0), DRAIN_INTERVAL);
        assert_eq!(next_drain(BUSY_DRAIN_RECORDS - 1), DRAIN_INTERVAL);
        assert_eq!(next_drain(BUSY_DRAIN_RECORDS), BUSY_DRAIN_INTERVAL);
        assert!(BUSY_DRAIN_INTERVAL > DRAIN_INTERVAL);
    }
}
