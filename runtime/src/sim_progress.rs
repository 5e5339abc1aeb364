//! `mynet sim`'s progress line on stderr, drawn only when stderr is a terminal (tests and CI
//! pipe it and see nothing): `sim  37% [========>    ] 3m42s/10m simulated, 12.3 s wall`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Runs shorter than this (wall time) never show the line.
const SHOW_AFTER: Duration = Duration::from_secs(1);
/// The line is redrawn at most this often.
const REDRAW_EVERY: Duration = Duration::from_millis(200);
/// Width of the bar between the brackets.
const BAR_WIDTH: usize = 30;

/// The progress line of one run.
pub struct SimProgress {
    duration_us: u64,
    started: Instant,
    drawn_at: Option<Instant>,
    /// Characters of the line on screen, to clear it.
    width: usize,
    on: bool,
}

impl SimProgress {
    /// A line for a run of `duration_us` simulated, on if stderr is a terminal.
    pub fn new(duration_us: u64) -> SimProgress {
        let on = std::io::stderr().is_terminal();
        SimProgress { duration_us, started: Instant::now(), drawn_at: None, width: 0, on }
    }

    /// The run reached `now_us` of simulated time.
    pub fn update(&mut self, now_us: u64) {
        let wall = self.started.elapsed();
        if !self.on || wall < SHOW_AFTER || self.drawn_at.is_some_and(|at| at.elapsed() < REDRAW_EVERY) {
            return;
        }
        self.drawn_at = Some(Instant::now());
        let text = line(now_us, self.duration_us, wall);
        // Pad over a longer previous line.
        let pad = self.width.saturating_sub(text.len());
        self.width = text.len();
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r{text}{}", " ".repeat(pad));
        let _ = stderr.flush();
    }

    /// Removes the line, so what follows starts on a clean line.
    pub fn clear(&mut self) {
        if self.width > 0 {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r{}\r", " ".repeat(self.width));
            let _ = stderr.flush();
            self.width = 0;
        }
    }
}

fn line(now_us: u64, duration_us: u64, wall: Duration) -> String {
    let fraction = (now_us as f64 / duration_us.max(1) as f64).clamp(0.0, 1.0);
    let filled = (fraction * BAR_WIDTH as f64) as usize;
    let bar = if filled >= BAR_WIDTH {
        "=".repeat(BAR_WIDTH)
    } else {
        format!("{}>{}", "=".repeat(filled), " ".repeat(BAR_WIDTH - filled - 1))
    };
    let time = mynet_sim::html::time;
    format!(
        "sim {:>3.0}% [{bar}] {}/{} simulated, {:.1} s wall",
        fraction * 100.0,
        time(now_us.min(duration_us)),
        time(duration_us),
        wall.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_share_bar_and_times() {
        let text = line(222_000_000, 600_000_000, Duration::from_millis(12_345));
        assert_eq!(text, "sim  37% [===========>                  ] 3m42s/10m simulated, 12.3 s wall");
        let done = line(600_000_000, 600_000_000, Duration::from_secs(60));
        assert!(done.starts_with("sim 100% [==============================] 10m/10m"), "{done}");
    }
}
