//! Training progress on the terminal: a bar per epoch on stderr, a line per epoch on stdout.

/// A progress bar per epoch on stderr, and one line per epoch on stdout.
#[derive(Default)]
pub struct Bars {
    bar: Option<indicatif::ProgressBar>,
    images: usize,
    started: Option<std::time::Instant>,
}

impl qatc::train::Progress for Bars {
    fn epoch_start(
        &mut self,
        epoch: usize,
        epochs: usize,
        phase: qatc::train::Phase,
        batches: usize,
    ) {
        let bar = indicatif::ProgressBar::new(batches as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} batches {msg}",
            )
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
            bar.set_message(format!("loss {loss:.4}, {rate:.0} img/s"));
            bar.inc(1);
        }
    }

    fn epoch_end(&mut self, s: &qatc::train::EpochStats) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let test = if s.phase == qatc::train::Phase::Qat {
            "test acc (fake quant)"
        } else {
            "test acc (float)"
        };
        println!(
            "epoch {:>2} {:<5} lr {:.5}  train loss {:.4}  train acc {:6.2} %  {test} {:6.2} %  {:>7.0} img/s",
            s.epoch,
            s.phase.name(),
            s.lr,
            s.train_loss,
            s.train_acc,
            s.test_acc,
            s.images_per_s
        );
    }
}
