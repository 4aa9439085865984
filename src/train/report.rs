//! `tokenmill report`: a run's `log.txt` drawn as build-nanogpt's notebook draws it, to SVG: train and val loss on
//! the left (against the OpenAI GPT-2 (124M) checkpoint's val loss when the run trained on FineWeb-Edu, the only
//! data that number was measured on), HellaSwag acc_norm against that checkpoint's score on the right (or a note
//! saying why the panel is empty). Baselines are dashed, in the plot and in the legend.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::train::log::{read_log_txt, LogParseError, LogSeries, LOG_TXT};
use crate::util::PathIoError;

/// Val loss of OpenAI's GPT-2 (124M) checkpoint on the FineWeb-Edu val split (build-nanogpt's plot baseline).
pub const GPT2_124M_VAL_LOSS: f64 = 3.2924;
/// HellaSwag acc_norm of OpenAI's GPT-2 (124M) checkpoint.
pub const GPT2_124M_HELLASWAG: f64 = 0.2955;
pub const REPORT_FILE: &str = "report.svg";
/// The dataset name FineWeb-Edu's shards carry (pipelines/fineweb-edu.toml, fineweb.py's prefix): the val-loss
/// baseline is drawn only for runs on it.
pub const FINEWEB_EDU_DATASET: &str = "edufineweb";

/// What is drawn besides the run's own curves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportOptions {
    /// The GPT-2 124M val loss line (meaningful only for FineWeb-Edu val loss).
    pub val_baseline: bool,
}

/// The element every report carries right after its `<svg ...>` tag: what proves an existing file is a report tokenmill
/// wrote, and so one `report` may replace.
pub const REPORT_SIGNATURE: &str = "<desc>tokenmill report</desc>";

/// Whether `path` is an SVG `tokenmill report` wrote (it starts with `<svg` and carries [`REPORT_SIGNATURE`]).
pub fn is_tokenmill_report(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(4096).read_to_end(&mut head));
    let head = String::from_utf8_lossy(&head);
    read.is_ok() && head.trim_start().starts_with("<svg") && head.contains(REPORT_SIGNATURE)
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Log(#[from] LogParseError),
    #[error("{path}: no train, val or hella lines to plot")]
    Empty { path: String },
    #[error("{path}: no finite value to plot ({notes}): the run diverged from its first logged step")]
    NothingFinite { path: String, notes: String },
    #[error("drawing the report: {0}")]
    Draw(String),
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
}

fn draw_err<E: std::fmt::Display>(e: E) -> ReportError {
    ReportError::Draw(e.to_string())
}

/// What the HellaSwag panel says when the log has no HellaSwag line.
pub const NO_HELLASWAG: &str =
    "no HellaSwag evaluations in log.txt: set eval.hellaswag_every and eval.hellaswag_file to score during training";

/// HellaSwag's chance level: 4 endings.
pub const HELLASWAG_CHANCE: f64 = 0.25;

/// An axis range covering `values`, `baseline` and the span `at_least`, padded by 5%. Loss curves start near ln(V) ~ 11 and fall fast;
/// the range is capped at the 95th percentile of the values so the interesting part stays readable.
///
/// The range is always finite and its span representable: values are clamped to +-[`AXIS_LIMIT`] (a loss of 1e308
/// next to -1e308 made the span infinite, and the axis's tick search never ended).
fn y_range(values: &[f64], baseline: f64, cap_outliers: bool, at_least: (f64, f64)) -> std::ops::Range<f64> {
    let mut sorted: Vec<f64> =
        values.iter().copied().filter(|v| v.is_finite()).map(|v| v.clamp(-AXIS_LIMIT, AXIS_LIMIT)).collect();
    sorted.sort_by(f64::total_cmp);
    let lo = sorted.first().copied().unwrap_or(baseline).min(baseline).min(at_least.0);
    let hi = if cap_outliers && sorted.len() >= 20 {
        sorted[(sorted.len() * 95) / 100]
    } else {
        sorted.last().copied().unwrap_or(baseline)
    }
    .max(baseline)
    .max(at_least.1);
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad)..(hi + pad)
}

/// The largest magnitude an axis spans: far beyond any loss or accuracy, small enough that a span across it is finite.
const AXIS_LIMIT: f64 = 1e300;

/// The drawable part of `series`, and one note per curve that had values no axis can hold (nan, inf: a run that
/// diverged logs them); those points are left out.
pub fn finite_only(series: &LogSeries) -> (LogSeries, Vec<String>) {
    let mut notes = Vec::new();
    let mut keep = |name: &str, points: &[(usize, f64)]| -> Vec<(usize, f64)> {
        let bad: Vec<&(usize, f64)> = points.iter().filter(|(_, v)| !v.is_finite()).collect();
        if let Some((step, v)) = bad.first() {
            notes.push(format!(
                "{} {name} value(s) are not finite (the first: {v} at step {step}) and are not drawn",
                bad.len()
            ));
        }
        points.iter().copied().filter(|(_, v)| v.is_finite()).collect()
    };
    let drawn = LogSeries {
        train: keep("train", &series.train),
        val: keep("val", &series.val),
        hella: keep("hella", &series.hella),
    };
    (drawn, notes)
}

/// A legend mark for a dashed line: two dashes, as the line is drawn (a macro: the closure's element type is
/// inferred at each legend).
macro_rules! dashed_mark {
    ($style:expr) => {{
        let style: ShapeStyle = $style;
        move |(x, y): (i32, i32)| {
            EmptyElement::at((x, y))
                + PathElement::new(vec![(0, 0), (8, 0)], style)
                + PathElement::new(vec![(12, 0), (20, 0)], style)
        }
    }};
}

/// Render `series` as an SVG document.
pub fn render_svg(series: &LogSeries, opts: ReportOptions) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1600, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (left, right) = root.split_horizontally(800);
        let max_step =
            series.train.iter().chain(&series.val).chain(&series.hella).map(|&(s, _)| s).max().unwrap_or(0).max(1)
                as f64;

        // Loss panel.
        let losses: Vec<f64> = series.train.iter().chain(&series.val).map(|&(_, v)| v).collect();
        let mut chart = ChartBuilder::on(&left)
            .caption("Loss", ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_step, {
                // Without the baseline, the range covers the curves alone (the first value stands in for it).
                let anchor =
                    if opts.val_baseline { GPT2_124M_VAL_LOSS } else { losses.first().copied().unwrap_or(1.0) };
                y_range(&losses, anchor, true, (f64::INFINITY, f64::NEG_INFINITY))
            })
            .map_err(draw_err)?;
        let int = |x: &f64| format!("{x:.0}");
        chart.configure_mesh().x_desc("step").y_desc("loss").x_label_formatter(&int).draw().map_err(draw_err)?;
        let pt = |&(s, v): &(usize, f64)| (s as f64, v);
        if !series.train.is_empty() {
            chart
                .draw_series(LineSeries::new(series.train.iter().map(pt), BLUE.mix(0.6)))
                .map_err(draw_err)?
                .label("train loss")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        }
        if !series.val.is_empty() {
            chart
                .draw_series(LineSeries::new(series.val.iter().map(pt), RGBColor(255, 127, 14).stroke_width(2)))
                .map_err(draw_err)?
                .label("val loss")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(255, 127, 14)));
        }
        if opts.val_baseline {
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, GPT2_124M_VAL_LOSS), (max_step, GPT2_124M_VAL_LOSS)],
                    8,
                    6,
                    RED.stroke_width(2),
                ))
                .map_err(draw_err)?
                .label(format!("OpenAI GPT-2 (124M) checkpoint val loss {GPT2_124M_VAL_LOSS} (FineWeb-Edu val)"))
                .legend(dashed_mark!(RED.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(draw_err)?;

        // HellaSwag panel.
        let accs: Vec<f64> = series.hella.iter().map(|&(_, v)| v).collect();
        let mut chart = ChartBuilder::on(&right)
            .caption("HellaSwag eval", ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_step, y_range(&accs, GPT2_124M_HELLASWAG, false, (0.24, 0.31)))
            .map_err(draw_err)?;
        chart.configure_mesh().x_desc("step").y_desc("acc_norm").x_label_formatter(&int).draw().map_err(draw_err)?;
        if !series.hella.is_empty() {
            chart
                .draw_series(LineSeries::new(series.hella.iter().map(pt), BLUE.stroke_width(2)))
                .map_err(draw_err)?
                .label("HellaSwag acc_norm")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
            chart.draw_series(series.hella.iter().map(|p| Circle::new(pt(p), 3, BLUE.filled()))).map_err(draw_err)?;
        }
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, GPT2_124M_HELLASWAG), (max_step, GPT2_124M_HELLASWAG)],
                8,
                6,
                RED.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(format!("OpenAI GPT-2 (124M) checkpoint {GPT2_124M_HELLASWAG}"))
            .legend(dashed_mark!(RED.stroke_width(2)));
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, HELLASWAG_CHANCE), (max_step, HELLASWAG_CHANCE)],
                4,
                4,
                BLACK.mix(0.5).stroke_width(1),
            ))
            .map_err(draw_err)?
            .label(format!("random chance {HELLASWAG_CHANCE}"))
            .legend(dashed_mark!(BLACK.mix(0.5).stroke_width(1)));
        if series.hella.is_empty() {
            chart
                .draw_series(std::iter::once(Text::new(
                    NO_HELLASWAG,
                    (max_step * 0.04, HELLASWAG_CHANCE + 0.045),
                    ("sans-serif", 16).into_font().color(&BLACK.mix(0.7)),
                )))
                .map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    // The signature goes right after the opening tag, so a later `report` can tell this file is its own.
    let open_end = svg.find('>').map_or(0, |i| i + 1);
    svg.insert_str(open_end, &format!("\n{REPORT_SIGNATURE}"));
    Ok(svg)
}

/// Whether the run in `log_dir` trained on FineWeb-Edu: its `config.toml` names the data directory, whose manifest
/// names the dataset. `None` when that cannot be read (then no baseline is drawn).
pub fn trained_on_fineweb_edu(log_dir: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(log_dir.join("config.toml")).ok()?;
    let cfg = crate::train::TrainConfig::from_toml_str(&text, "config.toml").ok()?;
    let manifest = crate::shards::Manifest::load(&cfg.data.dir?).ok()?;
    Some(manifest.dataset == FINEWEB_EDU_DATASET)
}

/// What `report` drew and wrote.
pub struct Written {
    /// The curves drawn (finite values only).
    pub series: LogSeries,
    /// Values left out (not finite), one note per curve.
    pub notes: Vec<String>,
    pub opts: ReportOptions,
    pub out: PathBuf,
}

/// Read `log_dir/log.txt` and write the plot atomically to `out` (default `log_dir/report.svg`), which must not exist
/// or be a report tokenmill wrote ([`is_tokenmill_report`]; `crate::output::write_file`).
pub fn write_report(log_dir: &Path, out: Option<&Path>) -> Result<Written, ReportError> {
    let log_path = log_dir.join(LOG_TXT);
    let read = read_log_txt(&log_path)?;
    if read.train.is_empty() && read.val.is_empty() && read.hella.is_empty() {
        return Err(ReportError::Empty { path: log_path.display().to_string() });
    }
    let (series, notes) = finite_only(&read);
    if series.train.is_empty() && series.val.is_empty() && series.hella.is_empty() {
        return Err(ReportError::NothingFinite { path: log_path.display().to_string(), notes: notes.join("; ") });
    }
    let opts = ReportOptions { val_baseline: trained_on_fineweb_edu(log_dir) == Some(true) };
    let svg = render_svg(&series, opts)?;
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| log_dir.join(REPORT_FILE));
    // Only a report replaces a report: never a run's log, config or checkpoint, nor anything else that is not one.
    crate::output::write_file(&out, svg.as_bytes(), "a report", is_tokenmill_report)?;
    Ok(Written { series, notes, opts, out })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 26: `report` spun forever on a loss series with no finite value (nan, inf, -inf) or one spanning
    /// +-1e308. Non-finite values are left out and said; any finite range is drawable.
    #[test]
    fn report_of_non_finite_or_huge_losses_ends() {
        for (values, finite) in [
            (vec![f64::NAN], false),
            (vec![f64::INFINITY, f64::NEG_INFINITY], false),
            (vec![1e308, -1e308], true),
            (vec![-1e308, 2.0, f64::NAN], true),
        ] {
            let series = LogSeries {
                train: values.iter().enumerate().map(|(i, &v)| (i, v)).collect(),
                val: vec![(0, f64::NAN)],
                hella: vec![],
            };
            let (drawn, notes) = finite_only(&series);
            assert_eq!(drawn.train.is_empty(), !finite, "{values:?}");
            assert!(notes.iter().any(|n| n.contains("val value(s) are not finite")), "{notes:?}");
            let range = y_range(&values, 3.0, true, (f64::INFINITY, f64::NEG_INFINITY));
            assert!(range.start.is_finite() && range.end.is_finite() && (range.end - range.start).is_finite());
            if finite {
                render_svg(&drawn, ReportOptions { val_baseline: false }).unwrap();
            }
        }
    }

    #[test]
    fn range_covers_baseline_and_caps_the_initial_spike() {
        let mut losses = vec![11.0];
        losses.extend((0..99).map(|i| 4.0 - i as f64 * 0.005));
        let r = y_range(&losses, GPT2_124M_VAL_LOSS, true, (f64::INFINITY, f64::NEG_INFINITY));
        assert!(r.start < GPT2_124M_VAL_LOSS && r.end < 5.0 && r.end > 4.0, "{r:?}");
    }

    #[test]
    fn val_baseline_only_when_asked_and_an_empty_hellaswag_panel_says_why() {
        let series = LogSeries { train: vec![(0, 10.9), (1, 9.0)], val: vec![(0, 10.9)], hella: vec![] };
        let with = render_svg(&series, ReportOptions { val_baseline: true }).unwrap();
        let without = render_svg(&series, ReportOptions { val_baseline: false }).unwrap();
        assert!(with.contains("3.2924") && !without.contains("3.2924"));
        assert!(without.contains("no HellaSwag evaluations") && without.contains("0.2955"));
        assert!(with.starts_with("<svg") && with.contains(REPORT_SIGNATURE));
    }
}
