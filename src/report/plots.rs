//! The report's plots, drawn by plotters: each chart draws on any backend, so the same drawing
//! becomes the page's inline SVG and a PNG file for papers. Text is laid out with a TrueType
//! font found on the system (DejaVu Sans, which setup installs, or `$CLOAKBENCH_FONT`).

use std::io::Cursor;
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const FONT: &str = "sans-serif";

/// Colours told apart in print and by most colour-blind readers (Tableau 10).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Something drawn the same way on every backend.
pub trait Chart {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// A chart as SVG text and PNG bytes.
pub struct Rendered {
    pub svg: String,
    pub png: Vec<u8>,
}

pub fn render<C: Chart>(chart: &C) -> Result<Rendered> {
    load_font()?;
    let (w, h) = chart.size();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        chart.draw(&root).map_err(|e| anyhow!("drawing a plot: {e}"))?;
        root.present().map_err(|e| anyhow!("drawing a plot: {e:?}"))?;
    }
    let mut pixels = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        chart.draw(&root).map_err(|e| anyhow!("drawing a plot: {e}"))?;
        root.present().map_err(|e| anyhow!("drawing a plot: {e:?}"))?;
    }
    let image = image::RgbImage::from_raw(w, h, pixels).ok_or_else(|| anyhow!("plot buffer of the wrong size"))?;
    let mut png = Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png)?;
    Ok(Rendered { svg: svg.replacen("<svg ", "<svg role=\"img\" ", 1), png: png.into_inner() })
}

/// Where a TrueType font is looked for, after `$CLOAKBENCH_FONT`.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
];

fn load_font() -> Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let wanted = std::env::var("CLOAKBENCH_FONT").ok();
            let path = wanted.clone().or_else(|| FONT_PATHS.iter().find(|p| std::path::Path::new(p).is_file()).map(|p| p.to_string())).ok_or_else(|| {
                "the report's plots need a TrueType font: install DejaVu Sans (Debian and Ubuntu: apt-get install fonts-dejavu-core; \
                 scripts/setup.sh does) or set CLOAKBENCH_FONT=/path/to/font.ttf"
                    .to_string()
            })?;
            let bytes = std::fs::read(&path).map_err(|e| format!("{path}: cannot read the font: {e}"))?;
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes).map_err(|_| format!("{path}: not a TrueType font"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

fn centred(size: u32) -> TextStyle<'static> {
    font(size).pos(Pos::new(HPos::Center, VPos::Center))
}

fn fail<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// A grid of values in 0..1 (rates), each cell coloured and labelled with its number.
pub struct HeatMap {
    pub title: String,
    pub rows: Vec<String>,
    /// Column headers; a `\n` splits one over two lines.
    pub columns: Vec<String>,
    pub values: Vec<Vec<Option<f64>>>,
    pub legend: String,
}

const CELL_W: i32 = 104;
const CELL_H: i32 = 34;

impl HeatMap {
    fn row_label_width(&self) -> i32 {
        self.rows.iter().map(|r| r.chars().count() as i32 * 8).max().unwrap_or(40).clamp(60, 320) + 16
    }
}

/// White (0) to deep blue (1).
fn shade(v: f64) -> RGBColor {
    let t = v.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(247.0, 8.0), mix(251.0, 48.0), mix(255.0, 107.0))
}

impl Chart for HeatMap {
    fn size(&self) -> (u32, u32) {
        let legend = 196 + self.legend.chars().count() as i32 * 7 + 20;
        let title = self.title.chars().count() as i32 * 9 + 20;
        let w = (self.row_label_width() + (CELL_W * self.columns.len() as i32).max(legend) + 20).max(title);
        let h = 48 + 44 + CELL_H * self.rows.len() as i32 + 50;
        (w.max(420) as u32, h as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(fail)?;
        root.draw(&Text::new(self.title.clone(), (10, 10), font(17))).map_err(fail)?;
        let (left, top) = (self.row_label_width(), 48 + 44);
        for (c, name) in self.columns.iter().enumerate() {
            let x = left + CELL_W * c as i32 + CELL_W / 2;
            for (line, text) in name.split('\n').enumerate() {
                root.draw(&Text::new(text.to_string(), (x, 56 + 17 * line as i32), centred(13))).map_err(fail)?;
            }
        }
        for (r, name) in self.rows.iter().enumerate() {
            let y = top + CELL_H * r as i32;
            root.draw(&Text::new(name.clone(), (8, y + CELL_H / 2), font(13).pos(Pos::new(HPos::Left, VPos::Center)))).map_err(fail)?;
            for c in 0..self.columns.len() {
                let x = left + CELL_W * c as i32;
                let value = self.values[r][c];
                let fill = value.map(shade).unwrap_or(RGBColor(238, 238, 238));
                root.draw(&Rectangle::new([(x, y), (x + CELL_W - 2, y + CELL_H - 2)], fill.filled())).map_err(fail)?;
                let label = value.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into());
                let ink = if value.is_some_and(|v| v > 0.55) { WHITE } else { BLACK };
                root.draw(&Text::new(label, (x + CELL_W / 2, y + CELL_H / 2), centred(14).color(&ink))).map_err(fail)?;
            }
        }
        let y = top + CELL_H * self.rows.len() as i32 + 14;
        for i in 0..=10 {
            let x = left + i * 16;
            root.draw(&Rectangle::new([(x, y), (x + 16, y + 12)], shade(i as f64 / 10.0).filled())).map_err(fail)?;
        }
        root.draw(&Text::new("0".to_string(), (left, y + 22), centred(12))).map_err(fail)?;
        root.draw(&Text::new("1".to_string(), (left + 176, y + 22), centred(12))).map_err(fail)?;
        root.draw(&Text::new(self.legend.clone(), (left + 196, y + 6), font(12).pos(Pos::new(HPos::Left, VPos::Center)))).map_err(fail)?;
        Ok(())
    }
}

/// A named set of points, joined by a line or not.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// A text beside each point (empty: none).
    pub point_labels: Vec<String>,
    /// Drawn larger, ringed in black: the protected users in a projection.
    pub emphasis: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points, point_labels: Vec::new(), emphasis: false }
    }
}

/// Points and lines on numeric axes, with the legend beside the plot (never over the data).
pub struct Xy {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    pub series: Vec<Series>,
    pub lines: bool,
    /// The chance line of a ROC plot.
    pub diagonal: bool,
    /// Integer ticks (years).
    pub whole_x: bool,
}

const LEGEND_W: i32 = 290;
const PLOT_W: i32 = 560;
const PLOT_H: i32 = 380;

impl Chart for Xy {
    fn size(&self) -> (u32, u32) {
        let rows = self.series.len() as i32;
        ((PLOT_W + LEGEND_W) as u32, PLOT_H.max(60 + 20 * rows) as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(fail)?;
        let (plot, legend) = root.split_horizontally(PLOT_W as u32);
        let plot = plot.shrink((0, 0), (PLOT_W as u32, PLOT_H as u32));
        let pad = |(a, b): (f64, f64)| if (b - a).abs() < 1e-9 { (a - 0.5, b + 0.5) } else { (a, b) };
        let ((x0, x1), (y0, y1)) = (pad(self.x_range), pad(self.y_range));
        let mut chart = ChartBuilder::on(&plot)
            .caption(&self.title, font(16))
            .margin(10)
            .margin_right(24)
            .x_label_area_size(46)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(fail)?;
        let whole = self.whole_x;
        let x_ticks = if whole { ((x1 - x0).round() as usize + 1).min(12) } else { 6 };
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .label_style(font(13))
            .axis_desc_style(font(14))
            .x_labels(x_ticks)
            .y_labels(6)
            .x_label_formatter(&|v| if whole { format!("{v:.0}") } else { tick(*v, x1 - x0) })
            .y_label_formatter(&|v| tick(*v, y1 - y0))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(fail)?;
        if self.diagonal {
            chart.draw_series(LineSeries::new(vec![(x0, y0), (x1, y1)], RGBColor(170, 170, 170).stroke_width(1))).map_err(fail)?;
        }
        for (i, s) in self.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            if self.lines && s.points.len() > 1 {
                chart.draw_series(LineSeries::new(s.points.clone(), colour.stroke_width(2))).map_err(fail)?;
            }
            let radius = if s.emphasis { 6 } else { 3 };
            // A curve of many points (ROC) reads better without a dot on each.
            if !(self.lines && s.points.len() > 20) {
                chart.draw_series(s.points.iter().map(|&p| Circle::new(p, radius, colour.filled()))).map_err(fail)?;
            }
            if s.emphasis {
                chart.draw_series(s.points.iter().map(|&p| Circle::new(p, radius, BLACK.stroke_width(1)))).map_err(fail)?;
            }
            for (p, text) in s.points.iter().zip(&s.point_labels).filter(|(_, t)| !t.is_empty()) {
                chart.draw_series(std::iter::once(EmptyElement::at(*p) + Text::new(text.clone(), (6, -14), font(12).color(&colour)))).map_err(fail)?;
            }
        }
        for (i, s) in self.series.iter().enumerate() {
            let (colour, y) = (PALETTE[i % PALETTE.len()], 50 + 20 * i as i32);
            legend.draw(&Circle::new((12, y), if s.emphasis { 6 } else { 4 }, colour.filled())).map_err(fail)?;
            if s.emphasis {
                legend.draw(&Circle::new((12, y), 6, BLACK.stroke_width(1))).map_err(fail)?;
            }
            let name: String = if s.name.chars().count() > 40 { s.name.chars().take(39).chain(std::iter::once('…')).collect() } else { s.name.clone() };
            legend.draw(&Text::new(name, (24, y), font(12).pos(Pos::new(HPos::Left, VPos::Center)))).map_err(fail)?;
        }
        Ok(())
    }
}

/// A tick label with as many decimals as an axis spanning `span` needs, without trailing zeros.
fn tick(v: f64, span: f64) -> String {
    let decimals = (-(span.abs().max(1e-12) / 5.0).log10()).ceil().clamp(0.0, 8.0) as usize + 1;
    let s = format!("{v:.decimals$}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// The range of `values` with a margin, within `limits` when given.
pub fn range(values: impl IntoIterator<Item = f64>, margin: f64) -> (f64, f64) {
    let (lo, hi) = values.into_iter().filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    // A single value gets a tenth of itself either side (half a unit around 0).
    let m = if hi - lo < 1e-12 { if hi.abs() < 1e-12 { 0.5 } else { hi.abs() * 0.1 } } else { ((hi - lo) * margin).max(1e-9) };
    (lo - m, hi + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heat_map_shows_every_number_and_renders_as_svg_and_png() {
        let map = HeatMap {
            title: "protection".into(),
            rows: vec!["fawkes high".into(), "lowkey default".into()],
            columns: vec!["baseline\ndlib".into(), "oblivious\nfacenet".into()],
            values: vec![vec![Some(1.0), Some(0.25)], vec![None, Some(0.5)]],
            legend: "protection rate".into(),
        };
        let out = render(&map).unwrap();
        for text in ["1.00", "0.25", "0.50", "fawkes high", "oblivious"] {
            assert!(out.svg.contains(text), "{text} missing");
        }
        let png = image::load_from_memory(&out.png).unwrap();
        assert_eq!((png.width(), png.height()), map.size());
    }

    #[test]
    fn ticks_read_without_trailing_zeros() {
        assert_eq!(tick(0.5, 1.0), "0.5");
        assert_eq!(tick(1.0, 1.0), "1");
        assert_eq!(tick(-0.0001, 1.0), "0");
        assert_eq!(tick(0.0125, 0.01), "0.0125");
        assert_eq!(tick(2017.0, 3.0), "2017");
        assert_eq!(range([0.2, 0.4], 0.0), (0.2 - 1e-9, 0.4 + 1e-9));
        assert_eq!(range([15.0], 0.1), (13.5, 16.5));
    }
}
