//! What the commands print on standard output. A reader that goes away
//! early (`portcullis queue list | head`) is no error: the command ends
//! quietly instead of panicking as `println!` does on a closed pipe.

use std::io::Write;

/// Writes `args` and a newline to standard output.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    finish_on_closed_pipe(out.write_fmt(args).and_then(|_| out.write_all(b"\n")));
}

fn finish_on_closed_pipe(result: std::io::Result<()>) {
    match result {
        Ok(()) => {}
        // Whoever read our output has all it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("portcullis: cannot write to standard output: {e}");
            std::process::exit(2);
        }
    }
}

/// `println!` for command output: see the module doc.
macro_rules! outln {
    () => { $crate::cli::output::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::cli::output::line(format_args!($($arg)*)) };
}
