//! Counters the kernel programs keep about themselves (a per-CPU array indexed by [`Stat`]).
//! User space sums the CPUs and exports each as an `obs_agent_*` self metric.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// An event could not be reserved on the ring buffer (reader too slow): lost.
    EventsLostRingFull = 0,
    /// Reading the target's memory or a syscall's registers failed.
    TargetReadErrors = 1,
}

pub const STAT_COUNT: u32 = 2;

impl Stat {
    pub const ALL: [Stat; STAT_COUNT as usize] = [Stat::EventsLostRingFull, Stat::TargetReadErrors];

    pub fn name(self) -> &'static str {
        match self {
            Stat::EventsLostRingFull => "ring_full",
            Stat::TargetReadErrors => "target_read_error",
        }
    }
}
