//! Outputs held back until the inputs that caused them are durable.
//!
//! The rule: what peers can see of input N (a send, dial, accept or close) happens only after
//! every log record up to N is durable, so a crash can never leave a peer holding the effect
//! of an input that the restarted node does not remember.

use std::collections::VecDeque;

use mynet_core::Output;

/// Outputs held at once. When full, the driver takes no network events until the disk
/// catches up (timers and the API still run).
pub const HELD_OUTPUTS_MAX: usize = 65_536;

/// Outputs in the order the node emitted them, each with the log position that must be
/// durable first.
#[derive(Debug, Default)]
pub struct Held {
    queue: VecDeque<(u64, Output)>,
}

impl Held {
    /// Holds `output` until every record before `needs` is durable.
    pub fn hold(&mut self, needs: u64, output: Output) {
        assert!(
            self.queue.back().is_none_or(|(last, _)| *last <= needs),
            "the log only grows: outputs are held in log order"
        );
        self.queue.push_back((needs, output));
    }

    /// The next output whose records are durable, given that every record before `durable`
    /// is; outputs come out in the order they went in.
    pub fn next_released(&mut self, durable: u64) -> Option<Output> {
        let (needs, _) = self.queue.front()?;
        if *needs > durable {
            return None;
        }
        self.queue.pop_front().map(|(_, output)| output)
    }

    /// Outputs held.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the driver should stop taking network events.
    pub fn is_full(&self) -> bool {
        self.queue.len() >= HELD_OUTPUTS_MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mynet_core::ConnId;

    fn send(i: u8) -> Output {
        Output::Send { conn: ConnId(1), bytes: vec![i] }
    }

    #[test]
    fn outputs_wait_for_their_records_and_keep_their_order() {
        let mut held = Held::default();
        held.hold(3, send(1));
        held.hold(3, Output::Close { conn: ConnId(1) });
        held.hold(5, send(2));
        assert_eq!(held.next_released(2), None, "record 2 of the first input is not durable yet");
        assert_eq!(held.next_released(3), Some(send(1)));
        assert_eq!(held.next_released(3), Some(Output::Close { conn: ConnId(1) }), "the close follows its send");
        assert_eq!(held.next_released(4), None);
        assert_eq!(held.next_released(9), Some(send(2)));
        assert_eq!((held.next_released(9), held.len()), (None, 0));
    }
}
