#!/usr/bin/env python3
"""Runs the side-by-side benchmark (see scripts/bench.sh) and writes
docs/bench/results.md, results.json and chart.svg.

Per broker it measures, besides the workloads: time from start to accepting
connections, CPU seconds per 100 000 messages (from /proc, broker process
only), peak RSS (VmHWM), and the time to restart after a kill -9 with a
persistent backlog in the store.

BROKER_LOG=<filter> and BROKER_LOG_FILE=<path> keep ferromq's log of the
runs (off by default).
"""
import json, os, platform, resource, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FERROMQ = os.path.join(ROOT, "target", "release", "ferromq")
AMQ = os.path.join(ROOT, "scripts", "activemq-local.sh")
JARS = ["activemq-client", "geronimo-jms_1.1_spec", "hawtbuf", "slf4j-api", "slf4j-nop",
        "geronimo-j2ee-management-1.1-spec"]
CP = ":".join(f"/usr/share/java/{j}.jar" for j in JARS)
REPS = int(os.environ.get("BENCH_REPS", "5"))
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "docs", "bench"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return time.time() - start
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(f"port {port} did not open")


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Ferromq:
    name = "ferromq"

    def __init__(self, config=None):
        self.dir = tempfile.mkdtemp(prefix="bench-ferromq-")
        self.stomp, self.openwire = free_port(), free_port()
        self.args = []
        if config:
            path = os.path.join(self.dir, "broker.toml")
            with open(path, "w") as f:
                f.write(config)
            self.args = ["--config", path]

    def start(self):
        t0 = time.time()
        self.proc = subprocess.Popen(
            [FERROMQ, "--data-dir", os.path.join(self.dir, "data"),
             "--stomp-addr", f"127.0.0.1:{self.stomp}", "--auto-addr", f"127.0.0.1:{self.openwire}", "--ws-addr", ""] + self.args,
            stdout=open(os.environ.get("BROKER_LOG_FILE", os.devnull), "w"), stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": os.environ.get("BROKER_LOG", "warn")},
            preexec_fn=os.setpgrp)  # paused (SIGSTOP) at times: its own process group, same session
        wait_port(self.stomp)
        wait_port(self.openwire)
        return time.time() - t0

    @property
    def pid(self):
        return self.proc.pid

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


class ActiveMQ:
    name = "activemq"

    def __init__(self, env=None):
        self.dir = tempfile.mkdtemp(prefix="bench-activemq-")
        self.stomp, self.openwire = free_port(), free_port()
        self.env = {**os.environ, **(env or {})}

    def _pidfile(self):
        return os.path.join(self.dir, "activemq.pid")

    def start(self):
        t0 = time.time()
        subprocess.run([AMQ, "start", str(self.openwire), str(self.stomp), self.dir], check=True,
                       stdout=subprocess.DEVNULL, env=self.env, preexec_fn=os.setpgrp)
        wait_port(self.openwire)
        wait_port(self.stomp)
        return time.time() - t0

    @property
    def pid(self):
        with open(self._pidfile()) as f:
            return int(f.read().strip())

    def kill9(self):
        os.kill(self.pid, signal.SIGKILL)
        time.sleep(1)

    def stop(self):
        subprocess.run([AMQ, "stop", str(self.openwire), str(self.stomp), self.dir],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def machine_busy(window=0.2):
    """Fraction of the machine's CPU time that was busy during `window` s."""
    def sample():
        with open("/proc/stat") as f:
            v = list(map(int, f.readline().split()[1:]))
        return sum(v) - v[3] - v[4], sum(v)
    b0, t0 = sample()
    time.sleep(window)
    b1, t1 = sample()
    return (b1 - b0) / max(t1 - t0, 1)


def steal_s():
    """CPU time the hypervisor gave to others while this VM wanted it
    (/proc/stat's steal), in seconds: a run with much of it was measured
    on a starved machine."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def settle(limit=0.15, timeout=15):
    """Waits until the machine is quiet (the previous run's brokers and JVMs
    done with their background work), so that runs do not overlap."""
    end = time.time() + timeout
    while time.time() < end and machine_busy() > limit:
        pass


def only(brokers, running):
    """Lets only the broker under test run: the other one is paused
    (SIGSTOP), so that its background work (ActiveMQ's checkpoints and
    journal clean-up, its JVM's GC) cannot land in the other's runs. With
    `None` both run. (The brokers have process groups of their own, but stay
    in our session: a new session would also be a new scheduler autogroup,
    which changes how the CPU is shared with the clients.)"""
    for name, b in brokers.items():
        try:
            os.kill(b.pid, signal.SIGCONT if running in (None, name) else signal.SIGSTOP)
        except (OSError, ValueError):
            pass


def run_json(cmd, timeout=900):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result from {cmd[:3]}: {out.stdout[-500:]} {out.stderr[-500:]}")


def tool(role, url, dest, count, extra, timeout=300):
    return [FERROMQ, role, "--url", url, "--destination", dest, "--count", str(count), "--json",
            "--timeout", str(timeout)] + extra


def java(role, url, dest, count, *args):
    return ["java", "-Xms512m", "-Xmx512m", "-XX:+UseSerialGC"] + os.environ.get("BENCH_JVM_OPTS", "").split() + ["-cp", f"{CP}:{JAVA_BUILD}", "JmsLoad", role, url, dest, str(count)] + [str(a) for a in args]


def workload(broker, proto, w, rep):
    """Runs one workload once; returns (figures, messages moved)."""
    dest = f"{'topic' if w['topic'] else 'queue'}://bench-{w['key']}-{proto}-{rep}"
    n = max(100, int(w["count"] * SCALE))
    url = f"stomp://127.0.0.1:{broker.stomp}" if proto == "stomp" else f"tcp://127.0.0.1:{broker.openwire}"
    consumers, producers = w["consumers"], w["producers"]
    if proto == "stomp":
        ccmd = tool("consumer", url, dest, n, ["--clients", str(consumers)])
        pcmd = tool("producer", url, dest, n, ["--clients", str(producers), "--size", str(w["size"])]
                    + (["--persistent"] if w["persistent"] else []) + (["--rate", str(w["rate"])] if w.get("rate") else []))
    else:
        # The JVM clients warm up first (see JmsLoad.java); those messages
        # count only in the broker's CPU per message.
        warm = int(w["jms_warmup"] * SCALE)
        ccmd = java("consumer", url, dest, n, consumers, warm)
        pcmd = java("producer", url, dest, n, w["size"], "true" if w["persistent"] else "false", w.get("rate", 0),
                    producers, warm)
    settle()
    cpu0 = proc_cpu(broker.pid)
    # The clients are this script's children, reaped before the end: their
    # CPU (JVM start-up and warm-up included) is in RUSAGE_CHILDREN.
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    steal0, t0 = steal_s(), time.time()
    cons = subprocess.Popen(ccmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(1.5 if proto == "openwire" else 0.5)
    prod = run_json(pcmd)
    out, _ = cons.communicate(timeout=600)
    res = next(json.loads(l) for l in out.splitlines()[::-1] if l.startswith("{"))
    cpu = proc_cpu(broker.pid) - cpu0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    steal, wall = steal_s() - steal0, time.time() - t0
    deliveries = res["messages"]
    moved = deliveries + res.get("warmup", 0)
    lat = res.get("latency") or {}
    return {
        "deliveries_per_second": res["messages_per_second"],
        "producer_per_second": prod["messages_per_second"],
        "p50_us": lat.get("p50_us"), "p99_us": lat.get("p99_us"),
        "cpu_s_per_100k": cpu / max(moved, 1) * 100_000,
        "client_cpu_s_per_100k": client_cpu / max(moved, 1) * 100_000,
        "deliveries": moved,
        "steal_s": steal, "wall_s": wall,
    }


WORKLOADS = [
    {"key": "q-np", "title": "queue, non-persistent, 1p/1c, 256 B", "topic": False, "persistent": False,
     "producers": 1, "consumers": 1, "size": 256, "count": 200_000, "jms_warmup": 100_000, "metric": "deliveries_per_second"},
    {"key": "q-p-sync", "title": "queue, persistent, 1p/1c, 256 B, each send confirmed", "topic": False,
     "persistent": True, "producers": 1, "consumers": 1, "size": 256, "count": 10_000, "jms_warmup": 5_000, "metric": "deliveries_per_second"},
    {"key": "q-p-4", "title": "queue, persistent, 4p/4c, 1 KiB", "topic": False, "persistent": True,
     "producers": 4, "consumers": 4, "size": 1024, "count": 20_000, "jms_warmup": 10_000, "metric": "deliveries_per_second"},
    {"key": "t-np", "title": "topic, non-persistent, 1p/4 subscribers, 256 B (deliveries/s)", "topic": True,
     "persistent": False, "producers": 1, "consumers": 4, "size": 256, "count": 100_000, "jms_warmup": 50_000, "metric": "deliveries_per_second"},
    {"key": "lat", "title": "latency at 5 000 msg/s (p99, µs; lower is better)", "topic": False, "persistent": False,
     "producers": 1, "consumers": 1, "size": 256, "count": 25_000, "rate": 5000, "jms_warmup": 70_000, "metric": "p99_us"},
]


def better(ratio, word, worse):
    """`ratio` = ActiveMQ / ferromq for a lower-is-better figure."""
    return f"{ratio:.1f}× {word}" if ratio >= 1 else f"{1 / ratio:.1f}× {worse}"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# Both brokers page persistent backlog out to their store. ActiveMQ with its
# memoryUsage at 70% of the heap runs out of heap filling a million messages
# (seen here at ~340 000): its recovery run uses a fixed 64 MB memoryUsage.
# ferromq runs with its defaults.
RECOVERY_SETUP = {
    "ferromq": lambda: Ferromq(),
    "activemq": lambda: ActiveMQ({"AMQ_MEMORY_LIMIT": "64 mb"}),
}


def recovery(name, n):
    """Fills a fresh broker with n persistent 100 B messages (transactions of
    1 000), kill -9, restart: time to accept connections, time until a
    consumer has the first message, and the broker's RSS then."""
    b = RECOVERY_SETUP[name]()
    b.start()
    fill = run_json(tool("producer", f"stomp://127.0.0.1:{b.stomp}", "queue://recovery", n,
                         ["--clients", "4", "--persistent", "--size", "100", "--batch", "1000"],
                         timeout=1800), timeout=1900)
    if fill["messages"] != n:
        raise RuntimeError(f"{name}: only {fill['messages']} of {n} stored: {fill.get('first_error')}")
    b.kill9()
    t0 = time.time()
    accepting = b.start()
    first = run_json(tool("consumer", f"stomp://127.0.0.1:{b.stomp}", "queue://recovery", 1, []))
    to_first = time.time() - t0
    out = {"restart_after_kill9_s": accepting, "first_message_after_kill9_s": to_first,
           "rss_after_recovery_bytes": proc_rss(b.pid), "restart_backlog_messages": n,
           "first_got": first["messages"]}
    b.stop()
    shutil.rmtree(b.dir, ignore_errors=True)
    return out


def svg_chart(rows, path):
    w, bar_h, gap, left = 760, 22, 14, 330
    h = 60 + len(rows) * (bar_h + gap)
    top = max(max(r["ratio"] for r in rows), 1.0) * 1.1
    scale = (w - left - 60) / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<text x="10" y="20" font-size="14" font-weight="bold">ferromq vs ActiveMQ 5.17 (ratio, higher is better)</text>']
    x1 = left + scale
    parts.append(f'<line x1="{x1}" y1="30" x2="{x1}" y2="{h - 10}" stroke="#999" stroke-dasharray="4"/>')
    parts.append(f'<text x="{x1 + 3}" y="42" fill="#666">1×</text>')
    for i, r in enumerate(rows):
        y = 50 + i * (bar_h + gap)
        parts.append(f'<text x="10" y="{y + 15}">{r["label"]}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{r["ratio"] * scale:.1f}" height="{bar_h}" fill="#2a7ab9"/>')
        parts.append(f'<text x="{left + r["ratio"] * scale + 5:.1f}" y="{y + 15}">{r["ratio"]:.1f}×</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def steal_line(totals):
    """How much CPU the hypervisor took away during the runs (a noisy
    neighbour slows both brokers, but unevenly)."""
    steal = sum(t["steal_s"] for t in totals.values())
    wall = sum(t["wall_s"] for t in totals.values())
    cpus = os.cpu_count() or 1
    return (f"CPU time stolen by the hypervisor during the runs: {steal:.1f} s "
            f"({100 * steal / max(wall * cpus, 1e-9):.1f} % of the machine; ferromq's runs "
            f"{totals['ferromq']['steal_s']:.1f} s, ActiveMQ's {totals['activemq']['steal_s']:.1f} s).")


def main():
    global JAVA_BUILD
    JAVA_BUILD = tempfile.mkdtemp(prefix="bench-java-")
    subprocess.run(["javac", "-nowarn", "-d", JAVA_BUILD, "-cp", CP, os.path.join(ROOT, "bench/java/JmsLoad.java")], check=True)
    os.makedirs(OUT, exist_ok=True)
    brokers = {"ferromq": Ferromq(), "activemq": ActiveMQ()}
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "reps": REPS, "scale": SCALE, "brokers": {}, "workloads": []}
    for name, b in brokers.items():
        results["brokers"][name] = {"startup_s": b.start()}
        print(f"{name} started in {results['brokers'][name]['startup_s']:.3f} s", flush=True)
    # Every run's broker CPU and deliveries, for the per-broker total.
    totals = {name: {"cpu_s": 0.0, "deliveries": 0, "steal_s": 0.0, "wall_s": 0.0} for name in brokers}
    try:
        for w in WORKLOADS:
            for proto in ["stomp", "openwire"]:
                runs = {"ferromq": [], "activemq": []}
                for rep in range(REPS):
                    for name in (["ferromq", "activemq"] if rep % 2 == 0 else ["activemq", "ferromq"]):
                        only(brokers, name)
                        r = workload(brokers[name], proto, w, rep)
                        runs[name].append(r)
                        totals[name]["cpu_s"] += r["cpu_s_per_100k"] * r["deliveries"] / 100_000
                        totals[name]["deliveries"] += r["deliveries"]
                        totals[name]["steal_s"] += r["steal_s"]
                        totals[name]["wall_s"] += r["wall_s"]
                        print(f"{w['key']:8} {proto:8} {name:8} {r[w['metric']]:>12.1f}  cpu/100k {r['cpu_s_per_100k']:.2f} s", flush=True)
                entry = {"key": w["key"], "title": w["title"], "protocol": proto, "metric": w["metric"]}
                for name in runs:
                    entry[name] = {k: median([r[k] for r in runs[name]]) for k in runs[name][0]}
                    # Every repetition's figure, for the spread.
                    entry[name]["runs"] = [r[w["metric"]] for r in runs[name]]
                f, a = entry["ferromq"][w["metric"]], entry["activemq"][w["metric"]]
                if f and a:
                    entry["ratio"] = (a / f) if w["metric"].endswith("_us") else (f / a)
                results["workloads"].append(entry)
        only(brokers, None)
        for name, b in brokers.items():
            results["brokers"][name]["peak_rss_bytes"] = proc_hwm(b.pid)
    finally:
        only(brokers, None)
        for b in brokers.values():
            b.stop()
    n = int(1_000_000 * SCALE)
    for name in ["ferromq", "activemq"]:
        r = recovery(name, n)
        print(f"recovery {name}: {r}", flush=True)
        results["brokers"][name].update(r)
    fb, ab = results["brokers"]["ferromq"], results["brokers"]["activemq"]
    cpu = {name: median([w[name]["cpu_s_per_100k"] for w in results["workloads"]]) for name in brokers}
    cpu_ratio = median([w["activemq"]["cpu_s_per_100k"] / w["ferromq"]["cpu_s_per_100k"]
                        for w in results["workloads"] if w["ferromq"]["cpu_s_per_100k"]])
    results["cpu_ratio_median"] = cpu_ratio
    total = {name: t["cpu_s"] / max(t["deliveries"], 1) * 100_000 for name, t in totals.items()}
    results["cpu_totals"] = totals
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = ["# ferromq vs Apache ActiveMQ 5.17: side-by-side benchmark", "",
             f"Machine: {os.cpu_count()} CPUs, {platform.platform()}. Same machine, same clients, same run; "
             f"A/B alternated, {REPS} repetition(s), medians; each run on a quiet machine with the other broker paused. "
             f"Scale {SCALE}. Clients: `ferromq producer/consumer` "
             "for STOMP, the stock ActiveMQ JMS client (`bench/java/JmsLoad.java`) for OpenWire. "
             + steal_line(totals) + " Clients' CPU: the load clients' own processes per 100 000 messages"
             " (for JMS, JVM start-up and warm-up included); where the clients need most of the 2 cores,"
             " a faster broker changes the throughput little.", "",
             "| workload | protocol | ferromq | ActiveMQ | ratio | broker CPU s/100k: ferromq, ActiveMQ (ratio) | clients' CPU s/100k: with ferromq, with ActiveMQ | repetitions: ferromq; ActiveMQ (min–max) |",
             "|---|---|---|---|---|---|---|---|"]
    chart = []
    for w in results["workloads"]:
        m = w["metric"]
        fv, av = w["ferromq"][m], w["activemq"][m]
        unit = "µs p99" if m.endswith("_us") else "msg/s"
        ratio = w.get("ratio")
        fc, ac = w["ferromq"]["cpu_s_per_100k"], w["activemq"]["cpu_s_per_100k"]
        cpu_cell = f"{fc:.2f}, {ac:.2f} ({ac / fc:.1f}× less)" if fc and ac else "–"
        fcl, acl = w["ferromq"].get("client_cpu_s_per_100k"), w["activemq"].get("client_cpu_s_per_100k")
        client_cell = f"{fcl:.2f}, {acl:.2f}" if fcl is not None and acl is not None else "–"
        spread = "; ".join(f"{min(w[n]['runs']):,.0f}–{max(w[n]['runs']):,.0f}" for n in ("ferromq", "activemq"))
        lines.append(f"| {w['title']} | {w['protocol']} | {fv:,.0f} {unit} | {av:,.0f} {unit} | "
                     f"{ratio:.2f}× | {cpu_cell} | {client_cell} | {spread} |" if ratio
                     else f"| {w['title']} | {w['protocol']} | {fv} | {av} | – | {cpu_cell} | {client_cell} | {spread} |")
        if ratio:
            chart.append({"label": f"{w['key']} ({w['protocol']})", "ratio": ratio})
    lines += ["", "| per broker | ferromq | ActiveMQ | ratio |", "|---|---|---|---|",
              f"| broker CPU per 100 000 deliveries, all runs together (total CPU / total deliveries) | "
              f"{total['ferromq']:.2f} s | {total['activemq']:.2f} s | {total['activemq'] / total['ferromq']:.1f}× less |",
              f"| broker CPU per 100 000 deliveries (median over workloads) | {cpu['ferromq']:.2f} s | {cpu['activemq']:.2f} s | "
              f"{cpu['activemq'] / cpu['ferromq']:.1f}× less |",
              f"| broker CPU per delivery: median of the per-workload ratios | | | {cpu_ratio:.1f}× less |",
              f"| peak RSS | {fb['peak_rss_bytes'] / 2**20:.0f} MiB | {ab['peak_rss_bytes'] / 2**20:.0f} MiB | "
              f"{ab['peak_rss_bytes'] / max(fb['peak_rss_bytes'], 1):.1f}× less |",
              f"| start-up to accepting connections | {fb['startup_s'] * 1000:.0f} ms | {ab['startup_s'] * 1000:.0f} ms | "
              f"{ab['startup_s'] / fb['startup_s']:.0f}× faster |",
              f"| restart after kill -9 with {fb['restart_backlog_messages']:,} persistent messages: accepting connections | "
              f"{fb['restart_after_kill9_s'] * 1000:.0f} ms | {ab['restart_after_kill9_s'] * 1000:.0f} ms | "
              f"{better(ab['restart_after_kill9_s'] / fb['restart_after_kill9_s'], 'faster', 'slower')} |",
              f"| … until a consumer has the first message | "
              f"{fb['first_message_after_kill9_s'] * 1000:.0f} ms | {ab['first_message_after_kill9_s'] * 1000:.0f} ms | "
              f"{better(ab['first_message_after_kill9_s'] / fb['first_message_after_kill9_s'], 'faster', 'slower')} |",
              f"| … broker RSS then | {fb['rss_after_recovery_bytes'] / 2**20:.0f} MiB | "
              f"{ab['rss_after_recovery_bytes'] / 2**20:.0f} MiB | "
              f"{better(ab['rss_after_recovery_bytes'] / max(fb['rss_after_recovery_bytes'], 1), 'less', 'more')} |",
              "", "![ratios](chart.svg)", ""]
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write("\n".join(lines))
    svg_chart(chart, os.path.join(OUT, "chart.svg"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
