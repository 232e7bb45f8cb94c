"""Opens a cloakbench report in headless Chromium and checks it as a reader's browser sees it.

Talks to Chromium over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages
ended by NUL on fds 3 and 4), so it needs nothing beyond the standard library and a chromium
binary. Checks: no console error, no exception, no failed load; every <img> loaded (natural
size > 0); every plot's SVG drawn with a size; every named section present; a click on a
table header sorts its table (every table, both ways). Saves a full-page screenshot and prints one JSON line of figures.

  python check_report.py PAGE.html SCREENSHOT.png run,results,...
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHECKS = r"""
(() => {
  const images = [...document.images].map(i => ({src: i.getAttribute('src'), w: i.naturalWidth, h: i.naturalHeight}));
  const plots = [...document.querySelectorAll('figure.plot svg')].map(s => { const r = s.getBoundingClientRect(); return [r.width, r.height]; });
  const sections = [...document.querySelectorAll('section')].map(s => s.id);
  // Sort every table by its first numeric column, both ways, and read the order back.
  const sorted = [];
  for (const table of document.querySelectorAll('table.sortable')) {
    const row = table.tBodies[0].rows[0];
    if (!row || table.tBodies[0].rows.length < 2) continue;
    const col = [...row.cells].findIndex(c => c.dataset.v !== undefined && c.dataset.v !== '');
    if (col < 0) continue;
    const th = table.tHead.rows[0].cells[col];
    const read = () => [...table.tBodies[0].rows].map(r => r.cells[col].dataset.v).filter(v => v !== '').map(Number);
    th.click(); const up = read(); th.click(); const down = read();
    const ascending = up.every((v, i) => i === 0 || up[i - 1] <= v);
    const descending = down.every((v, i) => i === 0 || down[i - 1] >= v);
    sorted.push({column: th.textContent, ascending, descending, rows: up.length});
  }
  const t = performance.getEntriesByType('navigation')[0];
  return JSON.stringify({images, plots, sections, sorted, load_ms: t ? t.loadEventEnd : null,
                         height: document.documentElement.scrollHeight, width: document.documentElement.scrollWidth});
})()
"""


class Browser:
    def __init__(self, binary):
        self.profile = tempfile.mkdtemp(prefix="cloakbench-chromium-")
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()

        def fds():
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "about:blank"],
            # The child's fds 3 and 4 as fds() leaves them (close_fds runs after preexec_fn).
            pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self.buffer = b""
        self.next_id = 0
        self.events = []

    def send(self, method, params=None, session=None, timeout=60):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_child, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while time.time() < deadline:
            reply = self.read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
        raise TimeoutError(method)

    def read(self, deadline):
        while b"\0" not in self.buffer:
            if time.time() > deadline:
                raise TimeoutError("no message from chromium")
            chunk = os.read(self.from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def wait_for(self, method, timeout=60):
        deadline = time.time() + timeout
        while not any(e["method"] == method for e in self.events):
            self.read(deadline)

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def errors(events):
    found = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            details = p["exceptionDetails"]
            found.append(details.get("text", "exception") + " " + details.get("exception", {}).get("description", ""))
        elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") == "error":
            found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
            found.append(p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
        elif e["method"] == "Network.loadingFailed":
            found.append("failed to load: " + p.get("errorText", ""))
    return found


def main():
    page, screenshot, wanted = sys.argv[1], sys.argv[2], [s for s in sys.argv[3].split(",") if s]
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not binary:
        sys.exit("no chromium binary on PATH")
    browser = Browser(binary)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session=session)
        started = time.time()
        browser.send("Page.navigate", {"url": "file://" + os.path.abspath(page)}, session=session)
        browser.wait_for("Page.loadEventFired")
        opened_s = time.time() - started
        figures = json.loads(browser.send("Runtime.evaluate", {"expression": CHECKS, "returnByValue": True}, session=session)["result"]["value"])
        height = min(figures["height"], 30000)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session, timeout=120)
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        problems = errors(browser.events)
    finally:
        browser.close()
    broken = [i["src"] for i in figures["images"] if not (i["w"] > 0 and i["h"] > 0)]
    flat = [p for p in figures["plots"] if not (p[0] > 0 and p[1] > 0)]
    missing = [s for s in wanted if s not in figures["sections"]]
    sorting = figures["sorted"]
    report = {"opened_s": round(opened_s, 3), "load_ms": figures["load_ms"], "images": len(figures["images"]), "plots": len(figures["plots"]),
              "sections": figures["sections"], "sorted_tables": len(sorting), "unsorted": [t for t in sorting if not (t["ascending"] and t["descending"])], "errors": problems, "broken_images": broken, "flat_plots": flat,
              "missing_sections": missing, "page_height": figures["height"], "page_width": figures["width"]}
    print(json.dumps(report))
    ok = not problems and not broken and not flat and not missing and all(t["ascending"] and t["descending"] for t in sorting)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
