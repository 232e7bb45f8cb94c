//! The page itself: sections, sortable tables and figures, as one HTML file with its style and
//! its one small script inline (it opens from disk with no network).

use std::fmt::Write;

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A table cell: text, or a number that sorts as a number and shows with `digits` decimals.
#[derive(Debug, Clone)]
pub enum Cell {
    Text(String),
    Number(Option<f64>, usize),
}

impl Cell {
    pub fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }

    /// A rate or score shown with three decimals (empty when absent).
    pub fn rate(v: Option<f64>) -> Cell {
        Cell::Number(v, 3)
    }

    pub fn count(v: i64) -> Cell {
        Cell::Number(Some(v as f64), 0)
    }

    fn html(&self) -> String {
        match self {
            Cell::Text(s) => format!("<td>{}</td>", escape(s)),
            Cell::Number(Some(v), digits) if v.is_finite() => format!("<td class=\"num\" data-v=\"{v}\">{v:.digits$}</td>"),
            Cell::Number(Some(v), _) if *v == f64::INFINITY => "<td class=\"num\" data-v=\"1e308\">∞</td>".into(),
            Cell::Number(_, _) => "<td class=\"num\" data-v=\"\">–</td>".into(),
        }
    }
}

/// A table whose columns sort on a click of their header.
pub fn table(headers: &[&str], rows: &[Vec<Cell>]) -> String {
    let mut out = String::from("<div class=\"scroll\"><table class=\"sortable\"><thead><tr>");
    for h in headers {
        let _ = write!(out, "<th title=\"click to sort\">{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        row.iter().for_each(|c| out.push_str(&c.html()));
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// A figure: the SVG inline, a link to its PNG, and a caption that says what is plotted.
pub fn figure(svg: &str, png: Option<&str>, caption: &str) -> String {
    let link = png.map(|p| format!(" <a href=\"{}\">PNG</a>", escape(p))).unwrap_or_default();
    format!("<figure class=\"plot\">{svg}<figcaption>{}{link}</figcaption></figure>", escape(caption))
}

/// One section of the page, with an anchor for the table of contents.
pub struct Section {
    pub id: &'static str,
    pub title: String,
    pub body: String,
}

/// The whole page.
pub fn page(title: &str, subtitle: &str, sections: &[Section]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>{STYLE}</style></head><body><header><h1>{t}</h1><p>{s}</p><nav>",
        t = escape(title),
        s = escape(subtitle)
    );
    for s in sections {
        let _ = write!(out, "<a href=\"#{}\">{}</a>", s.id, escape(&s.title));
    }
    out.push_str("</nav></header><main>");
    for s in sections {
        let _ = write!(out, "<section id=\"{}\"><h2>{}</h2>{}</section>", s.id, escape(&s.title), s.body);
    }
    let _ = writeln!(out, "</main><script>{SCRIPT}</script></body></html>");
    out
}

const STYLE: &str = "\
body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;margin:0;color:#1b1b1b;background:#fafafa;line-height:1.45}\
header{background:#16324f;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:24px}header p{margin:0 0 10px;opacity:.85}\
nav a{color:#cfe3ff;margin-right:16px;text-decoration:none;font-size:14px}nav a:hover{text-decoration:underline}\
main{padding:8px 28px 40px;max-width:1500px}section{margin-top:28px}h2{border-bottom:2px solid #16324f;padding-bottom:4px}\
h3{margin:22px 0 8px}p.note{color:#444;max-width:980px}\
.scroll{overflow-x:auto;max-height:560px;overflow-y:auto;border:1px solid #ddd;background:#fff}\
table{border-collapse:collapse;font-size:13px}th,td{padding:4px 9px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}\
th{position:sticky;top:0;background:#e8eef5;cursor:pointer;user-select:none}th.asc:after{content:' \\25B2'}th.desc:after{content:' \\25BC'}\
td.num{text-align:right;font-variant-numeric:tabular-nums}\
figure{margin:12px 0 18px;display:inline-block;vertical-align:top;background:#fff;border:1px solid #ddd;padding:8px;margin-right:12px}\
figure svg{display:block;max-width:100%;height:auto}figcaption{font-size:13px;color:#333;max-width:900px;margin-top:6px}\
.pictures{display:grid;grid-template-columns:repeat(3,minmax(200px,1fr));gap:10px;max-width:1100px}\
.pictures figure{margin:0;padding:6px;display:block}.pictures img{width:100%;height:auto;image-rendering:auto;display:block}\
.pictures .head{font-weight:bold;font-size:13px;text-align:center;align-self:end}\
.figures{font-size:13px;margin:2px 0 14px;grid-column:1 / -1;color:#333}\
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:14px}dl.facts dt{font-weight:bold}dl.facts dd{margin:0}\
details{margin:4px 0}code,pre{font-family:'DejaVu Sans Mono',monospace;font-size:12px}pre{white-space:pre-wrap;margin:4px 0}";

/// Sorts a table by the clicked column: numbers as numbers (blanks last), text as text.
const SCRIPT: &str = "\
document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){\
var col=th.cellIndex,table=th.closest('table'),body=table.tBodies[0],rows=Array.from(body.rows),asc=!th.classList.contains('asc');\
table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc')});th.classList.add(asc?'asc':'desc');\
rows.sort(function(a,b){var x=a.cells[col],y=b.cells[col];\
if(x.dataset.v!==undefined&&y.dataset.v!==undefined){var p=x.dataset.v===''?Infinity:+x.dataset.v,q=y.dataset.v===''?Infinity:+y.dataset.v;\
if(p===q)return 0;if(p===Infinity)return 1;if(q===Infinity)return -1;return asc?p-q:q-p}\
var r=x.textContent.localeCompare(y.textContent);return asc?r:-r});rows.forEach(function(r){body.appendChild(r)})})});";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_numbers_carry_their_sort_value() {
        let t = table(&["who", "rate"], &[vec![Cell::text("<Bill & \"Ted\">"), Cell::rate(Some(0.12345))], vec![Cell::text("x"), Cell::rate(None)]]);
        assert!(t.contains("&lt;Bill &amp; &quot;Ted&quot;&gt;"));
        assert!(t.contains("data-v=\"0.12345\">0.123<"));
        assert!(t.contains("data-v=\"\">–<"));
    }
}
