//! Tumbling event-time windows.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

impl Window {
    /// The window of `size` seconds (aligned to Unix time) that contains `ts`.
    pub fn containing(ts: u64, size: u64) -> Window {
        let start = ts - ts % size;
        // Callers bound timestamps first; saturating keeps a window well-formed regardless.
        Window {
            start,
            end: start.saturating_add(size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned() {
        assert_eq!(
            Window::containing(1377986401, 60),
            Window {
                start: 1377986400,
                end: 1377986460
            }
        );
        assert_eq!(Window::containing(120, 60).start, 120);
    }
}
