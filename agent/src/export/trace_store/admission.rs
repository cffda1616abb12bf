//! The admission bar: which new traces enter the store when more spans come than it holds.

/// Which new traces enter the store. Past `max_spans` spans a second (a saturated server
/// makes 100,000), storing them all would only cycle the store every few milliseconds, at a
/// cost per span (the agent's largest user-space item in the hello-world profile). So a new
/// trace enters if its id's hash is under a bar set once a second from the previous second's
/// spans: about `max_spans` spans a second get in, the store keeps at least the last second,
/// and the spans of one trace (children finish first) get the same answer. Error spans always
/// enter.
pub(super) struct Admission {
    bar: u64,
    /// None before the first span.
    window_start_nanos: Option<u64>,
    offered: u64,
}

const ADMISSION_WINDOW_NANOS: u64 = 1_000_000_000;

impl Admission {
    pub(super) fn new() -> Self {
        Self {
            bar: u64::MAX,
            window_start_nanos: None,
            offered: 0,
        }
    }

    /// Counts a span ending at `now_nanos` (wall clock); whether its trace may enter.
    pub(super) fn offer(&mut self, hash: u64, now_nanos: u64, per_window: u64) -> bool {
        let start = *self.window_start_nanos.get_or_insert(now_nanos);
        // Spans do not come in end-time order (several processes, CPUs): one a little
        // earlier than the window's start counts in it. Only a clock step back of more than
        // a window, or a quiet spell, starts afresh.
        let stepped_back = now_nanos.saturating_add(ADMISSION_WINDOW_NANOS) < start;
        let elapsed = now_nanos.saturating_sub(start);
        if stepped_back || elapsed >= ADMISSION_WINDOW_NANOS {
            let quiet = stepped_back || elapsed >= 2 * ADMISSION_WINDOW_NANOS;
            self.bar = if quiet || self.offered <= per_window {
                u64::MAX
            } else {
                (u128::from(u64::MAX) * u128::from(per_window) / u128::from(self.offered)) as u64
            };
            self.window_start_nanos = Some(now_nanos);
            self.offered = 0;
        }
        self.offered += 1;
        hash <= self.bar
    }
}
