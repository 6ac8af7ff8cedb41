//! What `fetch` shows while it works: on a terminal, a bar per file being downloaded and
//! one for the whole run (indicatif); otherwise (a log, CI) one plain line per event, so
//! logs stay readable.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress display of one run.
pub struct Progress {
    bars: Option<(MultiProgress, ProgressBar)>,
}

/// The display of one file.
pub struct FileProgress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Bars when stderr is a terminal, plain lines otherwise. `files` is the number of
    /// entries the run looks at.
    pub fn new(files: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress { bars: None };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(files));
        total.set_style(
            ProgressStyle::with_template("{prefix:36} [{bar:20}] {pos}/{len} files {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        total.set_prefix("total");
        Progress {
            bars: Some((multi, total)),
        }
    }

    /// A line that stays (above the bars on a terminal).
    pub fn log(&self, line: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// One entry is settled (fetched, present, skipped or failed).
    pub fn entry_done(&self) {
        if let Some((_, total)) = &self.bars {
            total.inc(1);
        }
    }

    /// A bar for a download of `name`.
    pub fn file(&self, name: &str) -> FileProgress {
        let bar = self.bars.as_ref().map(|(multi, _)| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:36!} [{bar:20}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        FileProgress { bar }
    }

    pub fn finish(&self) {
        if let Some((_, total)) = &self.bars {
            total.finish();
        }
    }
}

impl FileProgress {
    pub fn update(&self, done: u64, total: Option<u64>) {
        if let Some(bar) = &self.bar {
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(done);
        }
    }
}

impl Drop for FileProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
