// Child processes for the tests: the Python fastrpc server (tests/_js_server.py) and the
// chaos proxy (tests/_js_proxy.py), on 127.0.0.1 port 0; each prints "port N" when ready
// and is stopped by its pid.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

export const TESTS = fileURLToPath(new URL("../../tests/", import.meta.url));
export const HERE = fileURLToPath(new URL("./", import.meta.url)); // js/test/
export const PYTHON = process.env.FASTRPC_PYTHON || "python3";

/** Start `python script ...args` (a script in tests/, or in `dir`); resolves with {proc, port, lines} once it printed "port N". */
export function startPython(script, args = [], { timeout = 15000, dir = TESTS } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(PYTHON, [dir + script, ...args.map(String)], {
      cwd: dir,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, PYTHONUNBUFFERED: "1" },
    });
    const lines = [];
    let stderr = "";
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`${script} did not start within ${timeout} ms: ${stderr}`));
    }, timeout);
    let buf = "";
    proc.stdout.setEncoding("utf8");
    proc.stdout.on("data", (chunk) => {
      buf += chunk;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        lines.push(line);
        const m = /^port (\d+)$/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve({ proc, port: Number(m[1]), lines });
        }
      }
    });
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (c) => (stderr += c));
    proc.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${script} exited with ${code}: ${stderr}`));
    });
  });
}

/** Stop a child by its pid (SIGTERM, then SIGKILL after 3 s); resolves once it exited. */
export function stop(child) {
  if (!child) return Promise.resolve();
  const { proc } = child;
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => process.kill(proc.pid, "SIGKILL"), 3000);
    proc.once("exit", () => {
      clearTimeout(t);
      resolve();
    });
    process.kill(proc.pid, "SIGTERM");
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
