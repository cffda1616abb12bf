//! Counters the kernel programs keep about themselves (a per-CPU array indexed by [`Stat`]).
//! User space sums the CPUs and exports each as an `obs_agent_*` self metric.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// An event could not be reserved on the ring buffer (reader too slow): lost.
    EventsLostRingFull = 0,
    /// A request ended whose start was never seen (begun before attach, or evicted).
    RequestsWithoutStart = 1,
    /// Reading the target's memory failed (fields unreadable or paged out).
    TargetReadErrors = 2,
    /// A start record could not be stored (map full / error).
    StartMapErrors = 3,
}

pub const STAT_COUNT: u32 = 4;

impl Stat {
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::EventsLostRingFull,
        Stat::RequestsWithoutStart,
        Stat::TargetReadErrors,
        Stat::StartMapErrors,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stat::EventsLostRingFull => "ring_full",
            Stat::RequestsWithoutStart => "request_without_start",
            Stat::TargetReadErrors => "target_read_error",
            Stat::StartMapErrors => "start_map_error",
        }
    }
}
