//! Gives memory back to the operating system once a backlog has drained.
//!
//! The allocator keeps what it freed for reuse, per arena: a backlog
//! received on one runtime thread and another received later on a second
//! thread would each keep their own pages, so the process's resident size
//! would grow to the sum of its past backlogs rather than the largest.
//! Once a second the broker-wide count of message memory is compared with
//! its highest point since the last trim; when that much has been freed,
//! the free pages of every arena go back (`malloc_trim`, glibc only).

use std::time::Duration;

/// How much must have drained since the last trim.
pub const TRIM_STEP: usize = 16 << 20;

/// How often the count is looked at.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Decides when to trim, from the memory in use over time: once a step has
/// drained from the highest point since the last trim, and once more a
/// period later (the count falls as messages are taken, a little before
/// the last of them are freed).
#[derive(Debug, Default)]
pub struct Trimmer {
    high: usize,
    again: bool,
}

impl Trimmer {
    /// Takes the highest use since the last look and the use now; true
    /// when what was given back since the highest point is worth returning.
    pub fn due(&mut self, peak: usize, used: usize) -> bool {
        self.high = self.high.max(peak).max(used);
        if self.high - used >= TRIM_STEP {
            self.high = used;
            self.again = true;
            return true;
        }
        std::mem::take(&mut self.again)
    }
}

/// Returns the allocator's free pages to the operating system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it may be called from
    // any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn trims_once_a_step_has_drained_and_once_more_after() {
        let mut t = Trimmer::default();
        assert!(!t.due(0, 0));
        assert!(!t.due(40 * MIB, 40 * MIB));
        assert!(!t.due(30 * MIB, 30 * MIB), "10 MiB drained: not yet");
        assert!(t.due(20 * MIB, 20 * MIB), "20 MiB drained");
        assert!(t.due(19 * MIB, 19 * MIB), "once more");
        assert!(!t.due(10 * MIB, 10 * MIB), "10 MiB since the last trim");
        assert!(t.due(0, 0), "20 MiB since the last trim");
        assert!(t.due(0, 0), "once more");
        assert!(!t.due(0, 0), "nothing drained since");
        // A backlog that came and went between two looks.
        assert!(t.due(30 * MIB, 0));
        assert!(t.due(0, 0), "once more");
        // A new backlog that drains less than a step is left alone.
        assert!(!t.due(15 * MIB, 15 * MIB));
        assert!(!t.due(0, 0));
        assert!(!t.due(0, 0));
    }
}
