//! The CLI's standard output. A reader that goes away early (`mynet config show | head`) ends
//! the command quietly with success, as `head` asked, instead of a panic on a broken pipe.

use std::io::{self, Write};

/// Writes one line to stdout; on a closed pipe, exits with status 0.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
    finish(written);
}

/// Writes `text` as it is (no newline added); on a closed pipe, exits with status 0.
pub fn out(text: &str) {
    let mut out = io::stdout().lock();
    finish(out.write_all(text.as_bytes()).and_then(|()| out.flush()));
}

fn finish(written: io::Result<()>) {
    match written {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => {
            eprintln!("error: writing to stdout: {err}");
            std::process::exit(1);
        }
    }
}

/// `println!` that survives a closed pipe (see [`line`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// `n thing` or `n things`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
