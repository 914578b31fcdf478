//! The timeline chart: requests served and dropped per second for each client class, one column
//! per run (without / with the monitor), drawn as SVG with plotters. The SVG backend writes text
//! as SVG `<text>`, so no font library is needed on the machine.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::prelude::*;

use super::scenario::Class;

/// One run's series: per class, per second, (served, dropped).
pub struct RunSeries {
    pub title: String,
    pub classes: Vec<(Class, Vec<(u64, u64)>)>,
}

const SERVED: RGBColor = RGBColor(0x2e, 0x7d, 0x32);
const DROPPED: RGBColor = RGBColor(0xc6, 0x28, 0x28);

pub fn draw(path: &Path, runs: &[RunSeries]) -> anyhow::Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let rows = Class::ALL.len();
    let (w, h) = (480 * runs.len() as u32 + 40, 170 * rows as u32 + 60);
    let root = SVGBackend::new(path, (w, h)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing the chart: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            "contact lookups per second: served (green) and dropped (red)",
            ("sans-serif", 18),
        )
        .map_err(err)?;
    let cells = root.split_evenly((rows, runs.len()));
    for (row, class) in Class::ALL.into_iter().enumerate() {
        // One y scale per class across runs, so the two columns compare at a glance.
        let ymax = runs
            .iter()
            .flat_map(|r| r.classes.iter().filter(|(c, _)| *c == class))
            .flat_map(|(_, s)| s.iter().map(|&(a, b)| a.max(b)))
            .max()
            .unwrap_or(0)
            .max(1);
        let ymax = (ymax as f64 * 1.1).ceil() as u64;
        for (col, run) in runs.iter().enumerate() {
            let Some((_, series)) = run.classes.iter().find(|(c, _)| *c == class) else {
                continue;
            };
            let xmax = series.len().max(2) as u64 - 1;
            let cell = &cells[row * runs.len() + col];
            let mut chart = ChartBuilder::on(cell)
                .caption(
                    format!("{} - {}", class.label(), run.title),
                    ("sans-serif", 13),
                )
                .margin(6)
                .x_label_area_size(30)
                .y_label_area_size(44)
                .build_cartesian_2d(0f64..xmax as f64, 0f64..ymax as f64)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("s")
                .x_labels(7)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .y_labels(4)
                .max_light_lines(0)
                .label_style(("sans-serif", 10))
                .draw()
                .map_err(err)?;
            for (color, pick) in [(SERVED, 0usize), (DROPPED, 1usize)] {
                let points = series
                    .iter()
                    .enumerate()
                    .map(|(i, &(s, d))| (i as f64, (if pick == 0 { s } else { d }) as f64));
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))
                    .map_err(err)?;
            }
        }
    }
    root.present()
        .map_err(err)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_both_runs_with_any_values() {
        let series = |f: fn(u64) -> (u64, u64)| RunSeries {
            title: "run".into(),
            classes: Class::ALL.map(|c| (c, (0..12).map(f).collect())).to_vec(),
        };
        let runs = [
            series(|i| (3000 + i, 0)),
            series(|i| (i % 3, 20 - i)),
            series(|_| (0, 0)),
            series(|i| (u64::from(u32::MAX) * i, 7)),
        ];
        let path = std::env::temp_dir().join(format!("demo-chart-{}.svg", std::process::id()));
        draw(&path, &runs).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("legit - run") && svg.contains("low-and-slow - run"));
        assert!(
            svg.len() < 200_000,
            "the chart stays small: {} bytes",
            svg.len()
        );
    }
}
