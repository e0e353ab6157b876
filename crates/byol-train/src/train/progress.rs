//! What a run prints while it trains: a bar on a terminal, plain lines otherwise (logs, CI).

use std::io::IsTerminal;

use byol::output::print_line;

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
}

impl Progress {
    pub fn new(total: u64, done: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stdout().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total).with_position(done);
            bar.set_style(
                // `wide_msg` cuts the message to the terminal's width: the line never wraps.
                indicatif::ProgressStyle::with_template(
                    "{bar:20} {pos}/{len} [{elapsed_precise}<{eta_precise}] {wide_msg}",
                )
                .expect("valid template"),
            );
            bar
        });
        Self { bar, quiet }
    }

    /// A line above the bar (or a plain line).
    pub fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if !self.quiet => print_line(text),
            None => {}
        }
    }

    /// A log point: the bar's message, or a plain line.
    pub fn update(&self, step: u64, text: String) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(text);
            }
            None => self.line(text),
        }
    }

    pub fn tick(&self, step: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
        }
    }

    /// Leaves the last line on the terminal (the final step's loss and rate).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
