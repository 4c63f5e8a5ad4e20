//! PNG plots of the conversion report (plotters, bitmap backend). Text is drawn with a font
//! shipped in the binary (DejaVu Sans, assets/), so plots render the same on a machine without
//! system fonts.
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;
use train::search::Score;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/DejaVuSans.ttf");
        // A shipped, valid font: registration cannot fail on its bytes.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

const SIZE: (u32, u32) = (900, 540);
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("cannot draw {}: {e}", path.display())
}

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = vals
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    (lo - pad, hi + pad)
}

/// Single-FA heatmap: per layer, KL (top) and answer NLL per retrieval kind (bottom).
pub fn heatmap(path: &Path, scores: &[Score]) -> Result<()> {
    register_font();
    let e = err(path);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2);
    let n = scores.len().max(1) as i32;
    let (lo, hi) = range(scores.iter().map(|s| s.kl));
    let mut c = ChartBuilder::on(&top)
        .caption(
            "Single-FA heatmap: layer i as the only FA layer",
            ("sans-serif", 18),
        )
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(-1..n, lo..hi)
        .map_err(&e)?;
    c.configure_mesh()
        .y_desc("held-out KL")
        .draw()
        .map_err(&e)?;
    c.draw_series(LineSeries::new(
        scores.iter().enumerate().map(|(i, s)| (i as i32, s.kl)),
        COLORS[0].stroke_width(2),
    ))
    .map_err(&e)?;
    let kinds: Vec<String> = scores
        .first()
        .map(|s| s.retrieval.keys().cloned().collect())
        .unwrap_or_default();
    let (lo, hi) = range(
        scores
            .iter()
            .flat_map(|s| s.retrieval.values().map(|v| v.0)),
    );
    let mut c = ChartBuilder::on(&bottom)
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(-1..n, lo..hi)
        .map_err(&e)?;
    c.configure_mesh()
        .x_desc("layer")
        .y_desc("answer NLL")
        .draw()
        .map_err(&e)?;
    for (j, k) in kinds.iter().enumerate() {
        let col = COLORS[(j + 1) % COLORS.len()];
        c.draw_series(LineSeries::new(
            scores
                .iter()
                .enumerate()
                .map(|(i, s)| (i as i32, s.retrieval.get(k).map_or(f64::NAN, |v| v.0))),
            col.stroke_width(2),
        ))
        .map_err(&e)?
        .label(k.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}

/// Retrieval accuracy against distance, one line per layout.
pub fn retrieval_by_distance(path: &Path, curves: &[(String, Vec<(usize, f64)>)]) -> Result<()> {
    let xmax = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.0))
        .max()
        .unwrap_or(1) as f64;
    let curves: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .map(|(n, p)| (n.clone(), p.iter().map(|&(d, a)| (d as f64, a)).collect()))
        .collect();
    draw_lines(
        path,
        "Held-out retrieval accuracy by distance",
        (
            "distance (filler sentences between fact and question)",
            "exact-answer accuracy",
        ),
        (0.0..xmax * 1.05 + 1.0, -0.02..1.02),
        &curves,
    )
}

/// Cache bytes per sequence against context (log-log), one line per model.
pub fn cache_vs_context(
    path: &Path,
    contexts: &[usize],
    lines: &[(String, Vec<usize>)],
) -> Result<()> {
    register_font();
    let e = err(path);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let mib = |b: usize| (b as f64 / (1 << 20) as f64).max(1e-3);
    let (lo, hi) = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|&b| mib(b)))
        .fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    let x0 = *contexts.first().unwrap_or(&1) as f64;
    let x1 = *contexts.last().unwrap_or(&2) as f64;
    let mut c = ChartBuilder::on(&root)
        .caption("Cache per sequence", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (x0 * 0.8..x1 * 1.25).log_scale(),
            (lo * 0.7..hi * 1.4).log_scale(),
        )
        .map_err(&e)?;
    c.configure_mesh()
        .x_desc("context (tokens)")
        .y_desc("MiB (bf16 KV, f32 states)")
        .draw()
        .map_err(&e)?;
    for (j, (name, bytes)) in lines.iter().enumerate() {
        let col = COLORS[j % COLORS.len()];
        let pts: Vec<(f64, f64)> = contexts
            .iter()
            .zip(bytes)
            .map(|(&x, &b)| (x as f64, mib(b)))
            .collect();
        c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))
            .map_err(&e)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, col.filled())))
            .map_err(&e)?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}

/// Supernet score against post-distillation score, one point per layout.
pub fn fidelity(path: &Path, pts: &[(String, f64, f64)], tau: Option<f64>) -> Result<()> {
    register_font();
    let e = err(path);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let (x0, x1) = range(pts.iter().map(|p| p.1));
    let (y0, y1) = range(pts.iter().map(|p| p.2));
    let title = match tau {
        Some(t) => format!("Rank fidelity of the supernet (Kendall tau {t:.2})"),
        None => "Rank fidelity of the supernet".to_string(),
    };
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(&e)?;
    c.configure_mesh()
        .x_desc("score on the supernet (KL + answer NLL)")
        .y_desc("score after distillation")
        .draw()
        .map_err(&e)?;
    c.draw_series(pts.iter().enumerate().map(|(j, p)| {
        EmptyElement::at((p.1, p.2))
            + Circle::new((0, 0), 5, COLORS[j % COLORS.len()].filled())
            + Text::new(p.0.clone(), (7, -7), ("sans-serif", 13))
    }))
    .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}

/// A line chart of named curves (x, y) with points marked (benchmarks: TTFT against hit rate,
/// TTFT per turn); y from 0.
pub fn lines(
    path: &Path,
    title: &str,
    descs: (&str, &str),
    curves: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let (x0, x1) = range(curves.iter().flat_map(|c| c.1.iter().map(|p| p.0)));
    let (_, y1) = range(curves.iter().flat_map(|c| c.1.iter().map(|p| p.1)));
    draw_lines(path, title, descs, (x0..x1, 0.0..y1.max(1e-3)), curves)
}

fn draw_lines(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    (xr, yr): (std::ops::Range<f64>, std::ops::Range<f64>),
    curves: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    register_font();
    let e = err(path);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(xr, yr)
        .map_err(&e)?;
    c.configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(&e)?;
    for (j, (name, pts)) in curves.iter().enumerate() {
        let col = COLORS[j % COLORS.len()];
        c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))
            .map_err(&e)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, col.filled())))
            .map_err(&e)?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}
