/**
 * The agent's live topology page (`/topology` on the metrics address): the
 * SVG of `tsnet topology`, fetched again every two seconds and swapped in
 * when it changed (containers come and go without a reload); a click on a
 * service lists its endpoints with the kernel's counters, from
 * /topology.json. Self-contained: no script or style from elsewhere.
 */
export const TOPOLOGY_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tsnet topology</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; display: flex; height: 100vh; }
  #picture { flex: 1; overflow: auto; padding: 12px; }
  #side { width: 340px; border-left: 1px solid #ccc; padding: 12px; font-size: 13px; overflow: auto; }
  #side h2 { font-size: 15px; margin: 0 0 8px; }
  table { border-collapse: collapse; width: 100%; font-family: monospace; font-size: 12px; }
  td, th { text-align: left; padding: 2px 6px; border-bottom: 1px solid #eee; }
  #status { color: #777; font-size: 12px; margin-top: 12px; }
</style>
</head>
<body>
<div id="picture">loading…</div>
<div id="side"><h2>tsnet topology</h2><div id="detail">Click a service to see its endpoints.</div><div id="status"></div></div>
<script>
let lastSvg = '';
let selected = null;
async function refresh() {
  try {
    const svg = await (await fetch('/topology.svg', { cache: 'no-store' })).text();
    if (svg !== lastSvg) {
      document.getElementById('picture').innerHTML = svg;
      lastSvg = svg;
      for (const g of document.querySelectorAll('[data-service]')) g.addEventListener('click', () => show(g.getAttribute('data-service')));
    }
    if (selected) await show(selected);
    document.getElementById('status').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById('status').textContent = 'cannot reach the agent: ' + err;
  }
}
async function show(name) {
  selected = name;
  const view = await (await fetch('/topology.json', { cache: 'no-store' })).json();
  const s = view.nat.services.find((x) => x.name === name);
  const c = view.counters[name];
  const el = document.getElementById('detail');
  if (!s) { el.textContent = 'service ' + name + ' is gone'; return; }
  const hp = (ip, port) => (ip.includes(':') ? '[' + ip + ']' : ip) + ':' + port;
  const rows = s.endpoints.map((e) => {
    const k = c && c.endpoints[hp(e.ip, e.port)];
    return '<tr><td>' + hp(e.ip, e.port) + '</td><td>' + e.weight + '</td><td>' + (k ? k.packets : 0) + '</td><td>' + (k ? k.bytes : 0) + '</td></tr>';
  }).join('');
  el.innerHTML = '<h2 id="service-title">' + s.name + '</h2><div>' + hp(s.vip, s.port) + '/' + s.proto + (c ? ', ' + c.service.packets + ' connections' : '') + '</div>'
    + '<table id="endpoints"><tr><th>endpoint</th><th>weight</th><th>conns</th><th>bytes</th></tr>' + rows + '</table>';
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
`;
