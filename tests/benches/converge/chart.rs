//! The PNG chart: convergence time against N for both sides (median, with the min–max
//! spread as error bars).
//!
//! Text is rendered with `ab_glyph` from a TrueType font found on the machine (DejaVu or
//! Liberation Sans); without one the chart is drawn without labels rather than not at all.

use crate::Round;
use crate::child::Side;
use crate::stats::{Spread, rounds};
use plotters::prelude::*;
use std::collections::BTreeSet;
use std::path::Path;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a system font as `sans-serif`; answers whether one was found.
fn font() -> bool {
    for path in FONTS {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Draws the chart into `path`.
///
/// # Errors
/// The drawing backend's error, as text.
pub fn draw(all: &[Round], path: &Path) -> Result<(), String> {
    let sizes: Vec<usize> = all
        .iter()
        .map(|r| r.n)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if sizes.is_empty() {
        return Err("no rounds".into());
    }
    let series = |side: Side| -> Vec<(f64, Spread)> {
        sizes
            .iter()
            .map(|&n| {
                let s = Spread::of(rounds(all, side, n).iter().map(|r| r.converge_s).collect());
                (n as f64, s)
            })
            .collect()
    };
    let rekon = series(Side::Rekon);
    let native = series(Side::Native);
    let x_max = *sizes.last().unwrap_or(&1) as f64 * 1.08;
    let y_max = rekon
        .iter()
        .chain(&native)
        .map(|(_, s)| s.max)
        .fold(0.0, f64::max)
        * 1.15;
    let labels = font();
    let e = |e: &dyn std::fmt::Display| e.to_string();

    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if labels {
        builder
            .caption(
                "Time for N WebApps to converge (median, min–max over repetitions)",
                ("sans-serif", 20),
            )
            .x_label_area_size(44)
            .y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..x_max, 0f64..y_max.max(0.1))
        .map_err(|x| e(&x))?;
    let mut mesh = chart.configure_mesh();
    if labels {
        mesh.x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc("N (WebApps created before the controller starts)")
            .y_desc("seconds from process start to converged");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|x| e(&x))?;
    for (side, points, color) in [(Side::Rekon, &rekon, RED), (Side::Native, &native, BLUE)] {
        let line = chart
            .draw_series(LineSeries::new(
                points.iter().map(|(x, s)| (*x, s.median)),
                color.stroke_width(2),
            ))
            .map_err(|x| e(&x))?;
        if labels {
            line.label(side.name()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        chart
            .draw_series(
                points
                    .iter()
                    .map(|(x, s)| ErrorBar::new_vertical(*x, s.min, s.median, s.max, color, 8)),
            )
            .map_err(|x| e(&x))?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|(x, s)| Circle::new((*x, s.median), 4, color.filled())),
            )
            .map_err(|x| e(&x))?;
    }
    if labels {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
