//! Counters the kernel programs keep about themselves (a per-CPU array indexed by [`Stat`]).
//! User space sums the CPUs and exports each as an `obs_agent_*` self metric.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// An event could not be reserved on the ring buffer (reader too slow): lost.
    EventsLostRingFull = 0,
    /// Reading the target's memory or a syscall's registers failed.
    TargetReadErrors = 1,
    /// A goroutine creation not counted: the per-start-function counter map was full.
    GoStartsFull = 2,
}

pub const STAT_COUNT: u32 = 3;

impl Stat {
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::EventsLostRingFull,
        Stat::TargetReadErrors,
        Stat::GoStartsFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stat::EventsLostRingFull => "ring_full",
            Stat::TargetReadErrors => "target_read_error",
            Stat::GoStartsFull => "goroutine_start_table_full",
        }
    }
}
