//! Lines for whoever reads the output: a reader that went away (`byol-run ... | head`) ends
//! nothing, where `println!` and `eprintln!` would panic at the next line.

use std::io::Write;

/// A line on stdout, if anyone still reads it: a run whose output was cut short goes on training.
pub fn print_line(line: impl std::fmt::Display) {
    write_line(&mut std::io::stdout().lock(), format_args!("{line}"));
}

/// `line` and a newline to `out`, a write error ignored ([`crate::eprint_line!`] for stderr).
pub fn write_line(out: &mut impl Write, line: std::fmt::Arguments) {
    let _ = writeln!(out, "{line}");
}
