// SVG charts written by hand (no plotting dependency): line charts with linear or log axes and grouped bar charts.
// Every chart is a self-contained SVG string; numbers are placed by one scale function per axis, so a point's
// position is a pure function of its value and the axis range.

export interface Series { name: string; points: Array<[number, number]>; dashed?: boolean }
export interface LineChart {
  title: string; xLabel: string; yLabel: string; series: Series[];
  logX?: boolean; logY?: boolean; yFromZero?: boolean;
  /** Vertical reference lines, e.g. a special context length. */
  marks?: Array<{ x: number; label: string }>;
}
export interface BarChart {
  title: string; yLabel: string; logY?: boolean;
  groups: Array<{ label: string; bars: Array<{ name: string; value: number }> }>;
}

const W = 720, H = 440;
const M = { left: 78, right: 200, top: 44, bottom: 62 };
const PW = W - M.left - M.right, PH = H - M.top - M.bottom;
// Okabe-Ito: distinguishable with the common colour-vision deficiencies
export const PALETTE = ['#0072B2', '#D55E00', '#009E73', '#CC79A7', '#E69F00', '#56B4E9', '#F0E442', '#000000'];

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const fmt = (x: number): string => Number(x.toPrecision(6)).toString();

/** Short tick labels, at most 4 significant digits: 4096, 32.77K, 12.58M, 0.05. */
export function tickLabel(v: number): string {
  const a = Math.abs(v);
  const p4 = (x: number) => String(Number(x.toPrecision(4)));
  if (a >= 1e9) return `${p4(v / 1e9)}G`;
  if (a >= 1e6) return `${p4(v / 1e6)}M`;
  if (a >= 1e4) return `${p4(v / 1e3)}K`;
  return Number.isInteger(v) ? String(v) : p4(v);
}

/** About `count` round ticks covering [lo, hi] (steps of 1, 2 or 5 x 10^k). */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** Log-axis ticks: powers of `base` inside [lo, hi]; with fewer than 2 of them, the 1-2-5 steps inside. */
function logTicks(lo: number, hi: number, base: number): number[] {
  const out: number[] = [];
  for (let e = Math.floor(Math.log(lo) / Math.log(base)); base ** e <= hi * (1 + 1e-9); e++) if (base ** e >= lo * (1 - 1e-9)) out.push(base ** e);
  if (out.length >= 2) return out;
  const fine: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); 10 ** e <= hi; e++) for (const m of [1, 2, 5]) { const v = m * 10 ** e; if (v >= lo && v <= hi) fine.push(v); }
  return fine.length ? fine : [lo, hi];
}

interface Axis { scale(v: number): number; ticks: number[] }

function axis(lo: number, hi: number, log: boolean, pixels: number, flip: boolean, base = 10): Axis {
  if (log) {
    const a = Math.log(lo), b = Math.log(hi);
    const s = (v: number) => ((Math.log(v) - a) / (b - a || 1)) * pixels;
    return { scale: flip ? (v) => pixels - s(v) : s, ticks: logTicks(lo, hi, base) };
  }
  const s = (v: number) => ((v - lo) / (hi - lo || 1)) * pixels;
  return { scale: flip ? (v) => pixels - s(v) : s, ticks: niceTicks(lo, hi) };
}

function range(vals: number[], log: boolean, fromZero: boolean): [number, number] {
  const v = vals.filter((x) => Number.isFinite(x) && (!log || x > 0));
  if (v.length === 0) return log ? [1, 10] : [0, 1];
  let lo = Math.min(...v), hi = Math.max(...v);
  if (log) { lo /= 1.25; hi *= 1.25; } else {
    if (fromZero) lo = Math.min(0, lo);
    const pad = (hi - lo || Math.abs(hi) || 1) * 0.08;
    hi += pad;
    if (!fromZero) lo -= pad;
  }
  return [lo, hi];
}

function frame(title: string, xLabel: string, yLabel: string, body: string[]): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${M.left + PW / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`,
    `<text x="${M.left + PW / 2}" y="${H - 16}" text-anchor="middle">${esc(xLabel)}</text>`,
    `<text transform="translate(18 ${M.top + PH / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>`,
    `<g transform="translate(${M.left} ${M.top})">`,
    ...body,
    `<rect x="0" y="0" width="${PW}" height="${PH}" fill="none" stroke="#333"/>`,
    '</g>',
    '</svg>',
    '',
  ].join('\n');
}

function yGrid(y: Axis): string[] {
  return y.ticks.map((t) => `<line x1="0" x2="${PW}" y1="${fmt(y.scale(t))}" y2="${fmt(y.scale(t))}" stroke="#e4e4e4"/>`
    + `<text x="-8" y="${fmt(y.scale(t) + 4)}" text-anchor="end">${tickLabel(t)}</text>`);
}

function legend(names: string[], dashed: boolean[] = []): string[] {
  return names.map((n, i) => {
    const y = 10 + i * 20, c = PALETTE[i % PALETTE.length];
    return `<line x1="${PW + 14}" x2="${PW + 38}" y1="${y}" y2="${y}" stroke="${c}" stroke-width="3"${dashed[i] ? ' stroke-dasharray="6 4"' : ''}/>`
      + `<circle cx="${PW + 26}" cy="${y}" r="3.5" fill="${c}"/>`
      + `<text x="${PW + 44}" y="${y + 4}">${esc(n)}</text>`;
  });
}

export function lineChart(c: LineChart): string {
  const xs = c.series.flatMap((s) => s.points.map((p) => p[0])).concat((c.marks ?? []).map((m) => m.x));
  const ys = c.series.flatMap((s) => s.points.map((p) => p[1]));
  const [x0, x1] = range(xs, !!c.logX, false);
  const [y0, y1] = range(ys, !!c.logY, c.yFromZero ?? !c.logY);
  const x = axis(x0, x1, !!c.logX, PW, false, 2), y = axis(y0, y1, !!c.logY, PH, true);
  const body: string[] = yGrid(y);
  for (const t of x.ticks) {
    body.push(`<line x1="${fmt(x.scale(t))}" x2="${fmt(x.scale(t))}" y1="0" y2="${PH}" stroke="#f0f0f0"/>`
      + `<text x="${fmt(x.scale(t))}" y="${PH + 18}" text-anchor="middle">${tickLabel(t)}</text>`);
  }
  for (const m of c.marks ?? []) {
    const px = fmt(x.scale(m.x));
    body.push(`<line x1="${px}" x2="${px}" y1="0" y2="${PH}" stroke="#888" stroke-dasharray="3 3"/>`
      + `<text x="${px}" y="14" dx="-4" text-anchor="end" fill="#555">${esc(m.label)}</text>`);
  }
  c.series.forEach((s, i) => {
    const col = PALETTE[i % PALETTE.length];
    const pts = s.points.filter((p) => Number.isFinite(p[1]) && (!c.logY || p[1] > 0)).sort((a, b) => a[0] - b[0]);
    if (pts.length > 1) {
      body.push(`<polyline fill="none" stroke="${col}" stroke-width="2.5"${s.dashed ? ' stroke-dasharray="6 4"' : ''} points="${pts.map((p) => `${fmt(x.scale(p[0]))},${fmt(y.scale(p[1]))}`).join(' ')}"/>`);
    }
    for (const p of pts) {
      body.push(`<circle cx="${fmt(x.scale(p[0]))}" cy="${fmt(y.scale(p[1]))}" r="4" fill="${col}"><title>${esc(s.name)}: ${tickLabel(p[0])}, ${fmt(p[1])}</title></circle>`);
    }
  });
  body.push(...legend(c.series.map((s) => s.name), c.series.map((s) => !!s.dashed)));
  return frame(c.title, c.xLabel, c.yLabel, body);
}

export function barChart(c: BarChart): string {
  const names = [...new Set(c.groups.flatMap((g) => g.bars.map((b) => b.name)))];
  const vals = c.groups.flatMap((g) => g.bars.map((b) => b.value));
  const [y0, y1] = range(vals, !!c.logY, true);
  const y = axis(y0, y1, !!c.logY, PH, true);
  const body: string[] = yGrid(y);
  const gw = PW / Math.max(1, c.groups.length), bw = (gw * 0.8) / Math.max(1, names.length);
  const base = c.logY ? PH : y.scale(0);
  c.groups.forEach((g, gi) => {
    const gx = gi * gw + gw * 0.1;
    body.push(`<text x="${fmt(gi * gw + gw / 2)}" y="${PH + 18}" text-anchor="middle">${esc(g.label)}</text>`);
    for (const b of g.bars) {
      if (!(b.value > 0) && c.logY) continue;
      const i = names.indexOf(b.name);
      const top = y.scale(b.value);
      body.push(`<rect x="${fmt(gx + i * bw)}" y="${fmt(Math.min(top, base))}" width="${fmt(bw * 0.92)}" height="${fmt(Math.abs(base - top))}" fill="${PALETTE[i % PALETTE.length]}"><title>${esc(b.name)}: ${fmt(b.value)}</title></rect>`);
    }
  });
  body.push(...legend(names));
  return frame(c.title, '', c.yLabel, body);
}
