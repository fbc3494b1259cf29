//! Gives memory back to the operating system once a backlog has drained.
//!
//! The allocator keeps what it freed for reuse, per arena: a backlog
//! received on one runtime thread and another received later on a second
//! thread would each keep their own pages, so the process's resident size
//! would grow to the sum of its past backlogs rather than the largest.
//! Once a second the broker-wide count of message memory is compared with
//! its highest point since the last trim; once [`TRIM_STEP`] of it has been
//! freed, the free pages of every arena go back (`malloc_trim`, glibc only).

use std::time::Duration;

/// How much must have drained since the last trim.
pub const TRIM_STEP: usize = 16 << 20;

/// How often the count is looked at.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Decides when to trim, from the memory in use over time: once a step has
/// drained from the highest point since the last trim, and once more when
/// the draining stops (the count falls as messages are taken, a little
/// before the last of them are freed; and what drains after a trim in the
/// middle of a drain would otherwise stay).
#[derive(Debug, Default)]
pub struct Trimmer {
    high: usize,
    last: usize,
    draining: bool,
}

impl Trimmer {
    /// Takes the highest use since the last look and the use now; true
    /// when what was given back since the highest point is worth returning.
    pub fn due(&mut self, peak: usize, used: usize) -> bool {
        self.high = self.high.max(peak).max(used);
        let falling = used < self.last;
        self.last = used;
        if self.high - used >= TRIM_STEP {
            self.high = used;
            self.draining = true;
            return true;
        }
        if self.draining && !falling {
            self.draining = false;
            return true;
        }
        false
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
    fn trims_once_a_step_has_drained_and_once_the_draining_stops() {
        let mut t = Trimmer::default();
        assert!(!t.due(0, 0));
        assert!(!t.due(40 * MIB, 40 * MIB));
        assert!(!t.due(30 * MIB, 30 * MIB), "10 MiB drained: not yet");
        assert!(t.due(20 * MIB, 20 * MIB), "20 MiB drained");
        assert!(!t.due(12 * MIB, 12 * MIB), "still draining, 8 MiB since");
        assert!(!t.due(6 * MIB, 6 * MIB), "still draining");
        assert!(t.due(6 * MIB, 6 * MIB), "the draining stopped");
        assert!(!t.due(6 * MIB, 6 * MIB), "nothing drained since");
        // A backlog that came and went between two looks.
        assert!(t.due(30 * MIB, 0));
        assert!(t.due(0, 0), "once more");
        assert!(!t.due(0, 0));
        // A new backlog that drains less than a step is left alone.
        assert!(!t.due(15 * MIB, 15 * MIB));
        assert!(!t.due(0, 0));
        assert!(!t.due(0, 0));
    }
}
