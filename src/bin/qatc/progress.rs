//! Training progress on the terminal: a bar per epoch on stderr (with elapsed time and ETA), a
//! line per epoch, and what runs after the last epoch.

/// Where the per-epoch lines go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    Stdout,
    /// With `--json`: stdout holds only the JSON object.
    Stderr,
    /// With `--quiet`: no lines and no bars.
    None,
}

/// A progress bar per epoch on stderr, one line per epoch, and a spinner naming the work after
/// the last epoch.
pub struct Bars {
    lines: Lines,
    bar: Option<indicatif::ProgressBar>,
    images: usize,
    started: Option<std::time::Instant>,
    header_shown: bool,
    /// Epochs are measured on a validation set rather than the test set.
    validation: bool,
}

impl Bars {
    pub fn new(lines: Lines, validation: bool) -> Bars {
        Bars {
            lines,
            bar: None,
            images: 0,
            started: None,
            header_shown: false,
            validation,
        }
    }

    /// Clears the spinner of the last stage.
    pub fn done(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn line(&self, text: &str) {
        match self.lines {
            Lines::Stdout => println!("{text}"),
            Lines::Stderr => eprintln!("{text}"),
            Lines::None => {}
        }
    }
}

/// The bar of an epoch: where it is, the time it has taken and the time it will still take.
const BAR: &str = "{prefix} [{bar:20}] {pos}/{len} {elapsed}<{eta} {msg}";

/// The epoch lines' columns, 80 characters at most.
const HEADER: &str = "epoch    phase  lr        loss    train acc  test acc    img/s";

impl qatc::train::Progress for Bars {
    fn epoch_start(
        &mut self,
        epoch: usize,
        epochs: usize,
        phase: qatc::train::Phase,
        batches: usize,
    ) {
        if !self.header_shown {
            self.header_shown = true;
            let (header, set) = if self.validation {
                (
                    HEADER.replace("test acc", " val acc"),
                    "val acc: on the validation set",
                )
            } else {
                (HEADER.to_string(), "test acc: on the test set")
            };
            self.line(&format!(
                "\n{header}\n({set}; fake quant in qat epochs, float in float ones)"
            ));
        }
        self.done();
        if self.lines == Lines::None {
            return;
        }
        let bar = indicatif::ProgressBar::new(batches as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(BAR)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {epoch}/{epochs} {}", phase.name()));
        self.bar = Some(bar);
        self.images = 0;
        self.started = Some(std::time::Instant::now());
    }

    fn batch_done(&mut self, loss: f32, images: usize) {
        self.images += images;
        if let (Some(bar), Some(started)) = (&self.bar, self.started) {
            let rate = self.images as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {loss:.4} {rate:.0} img/s"));
            bar.inc(1);
        }
    }

    fn epoch_end(&mut self, s: &qatc::train::EpochStats) {
        self.done();
        self.line(&epoch_line(s));
    }

    fn stage(&mut self, what: &str) {
        if self.lines == Lines::None {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            spinner
        });
        bar.set_message(format!("{what}..."));
    }
}

/// One epoch's figures under [`HEADER`].
fn epoch_line(s: &qatc::train::EpochStats) -> String {
    format!(
        "{:<8} {:<6} {:<9} {:<7.4} {:>7.2} %  {:>6.2} %  {:>7.0}",
        s.epoch,
        s.phase.name(),
        qatc::syntax::fmt::number(s.lr),
        s.train_loss,
        s.train_acc,
        s.test_acc,
        s.images_per_s
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #16 item 18: the bar shows elapsed time and ETA; an epoch's line fits 80 columns even
    /// with wide figures.
    #[test]
    fn bars_show_time_and_lines_fit_80_columns() {
        assert!(BAR.contains("{elapsed}") && BAR.contains("{eta}"));
        assert!(indicatif::ProgressStyle::with_template(BAR).is_ok());
        let wide = qatc::train::EpochStats {
            epoch: 100,
            phase: qatc::train::Phase::Float,
            lr: 0.000_123_456_789,
            train_loss: 12.345_678,
            train_acc: 100.0,
            test_acc: 100.0,
            on_validation: false,
            images_per_s: 9_999_999.0,
        };
        for line in [epoch_line(&wide), HEADER.to_string()] {
            assert!(
                line.chars().count() <= 80,
                "{} columns: {line}",
                line.chars().count()
            );
        }
    }
}
