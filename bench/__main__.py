"""`python -m bench` (or `bench/run`): the fast-path benchmark, one command.

Builds its two test images, serves them from a local docker-registry, and times in
one run, with the same compressor settings (gzip level 6, 128 KiB blocks, all cores):
this project end to end (PullImage through `imagegw serve` to a published image),
skopeo + umoci + mksquashfs, Charliecloud (ch-image pull + ch-convert), the floor
(tar2sqfs over an already flattened tar in the page cache; once as Debian builds it, on
zlib, and once with its gzip blocks on libdeflate, as imagegw runs it), and the bound
(the libdeflate floor while C tools inflate and digest every layer at once: the work no
converter can skip).
Then: warm re-pull, a pull for a second system (conversion cache), lookup throughput
from 200 concurrent clients against a no-op servicer on the same server stack, and 100
concurrent pulls of one image. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import images as bench_images  # noqa: E402
from bench.measure import Sample, TreeSampler, cpu_seconds, hwm, read_io, run  # noqa: E402
from imagegw.domain.config import ConverterOptions  # noqa: E402
from imagegw.pipeline import gzip_engine, writer_malloc  # noqa: E402

LEVEL = 6
BLOCK = 131072
MIB = 1024 * 1024
PYTHON = sys.executable


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- registries ---------------------------------------------------------------------


def _blob_gets(registry, offset: int) -> int:
    text = registry.log_path.read_bytes()[offset:].decode("utf-8", "replace")
    return len(re.findall(r'"GET /v2/[^ "]+/blobs/sha256:[0-9a-f]{64} ', text))


def _log_offset(registry) -> int:
    return registry.log_path.stat().st_size


def start_tls_registry(workdir: Path, storage: Path):
    """A second docker-registry over the same storage, with TLS (ch-image speaks https only)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from testbed.registry import free_port

    workdir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (workdir / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (workdir / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  tls:\n"
        f"    certificate: {workdir / 'tls.crt'}\n    key: {workdir / 'tls.key'}\n")
    log_file = open(workdir / "registry.log", "wb")  # noqa: SIM115 - lives as long as the run
    process = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(config)],
                               stdout=log_file, stderr=subprocess.STDOUT)
    time.sleep(1.0)
    return process, f"127.0.0.1:{port}"


# -- the contenders -------------------------------------------------------------------


def queued_blocks(jobs: int) -> int:
    """The compressor queue tar2sqfs gets in ours (the default) and in the floor."""
    return ConverterOptions(block_size=BLOCK).blocks_queued(jobs)


#: The floors: tar2sqfs as Debian builds it (zlib), and as imagegw runs it (libdeflate).
FLOOR_NAMES = {"zlib": "floor: tar2sqfs over a flat tar in page cache",
               "libdeflate": "floor, libdeflate: the same, gzip blocks by libdeflate (as imagegw)"}


def floor_command(flat: Path, out: Path, jobs: int, engine: str = "zlib") -> str:
    """tar2sqfs over the flattened tar, with our settings (the floors, and the bound's
    writer): as Debian builds it ("zlib"), or as imagegw runs it ("libdeflate": the shim,
    and the allocator imagegw's tar2sqfs runs on, writer_malloc.py)."""
    preload = ""
    if engine == "libdeflate":
        options = writer_malloc.resolve(ConverterOptions(gzip_engine="libdeflate"))
        env = writer_malloc.preload(gzip_engine.tar2sqfs_environment(options), options)
        assert env is not None
        preload = f"LD_PRELOAD='{env['LD_PRELOAD']}' "
        if options.writer_allocator == "jemalloc":
            preload += f"MALLOC_CONF='{env['MALLOC_CONF']}' "
    return (f"{preload}tar2sqfs -q -f --no-skip -c gzip -X level={LEVEL} -b {BLOCK} -j {jobs} "
            f"-Q {queued_blocks(jobs)} --no-xattr --defaults uid=0,gid=0,mode=0755 "
            f"{out} < {flat}")


def measure_floor(image, workdir: Path, jobs: int, engine: str = "zlib") -> Sample:
    if engine == "libdeflate" and (problem := gzip_engine.usable_shim()[1]):
        return Sample.failed(FLOOR_NAMES[engine], f"{problem}: {gzip_engine.BUILD_HINT}")
    flat = workdir / f"flat-{image.name}.tar"
    if not flat.exists():
        log(f"{image.name}: writing the flattened tar for the floor")
        partial = flat.with_suffix(".partial")
        bench_images.write_flat_tar(image, partial)
        partial.rename(flat)
    run("warm page cache", f"cat {flat} > /dev/null")
    out = workdir / f"floor-{image.name}.sqfs"
    sample = run(FLOOR_NAMES[engine], floor_command(flat, out, jobs, engine))
    sample.note = (sample.note + f" image {out.stat().st_size / 1e6:.1f} MB").strip() \
        if out.exists() else sample.note
    out.unlink(missing_ok=True)
    return sample


def measure_bound(image, workdir: Path, jobs: int, engine: str) -> Sample:
    """The work no converter can skip, on the same cores at once: the floor's tar2sqfs
    (on the gzip engine imagegw uses),
    inflating every layer (igzip, ISA-L's tool) and checking every layer's digest
    (openssl). Whatever a converter does on top (downloading, reading the tars,
    flattening) comes over this."""
    name = f"bound: the {engine} floor + inflating and digesting every layer, at once"
    missing = [tool for tool in ("igzip", "openssl") if not shutil.which(tool)]
    if missing:
        return Sample.failed(name, f"not installed: {missing}")
    flat = workdir / f"flat-{image.name}.tar"
    layers = " ".join(str(layer.path) for layer in image.layers)
    run("warm page cache", f"cat {flat} {layers} > /dev/null")
    out = workdir / f"bound-{image.name}.sqfs"
    sample = run(name, f"{floor_command(flat, out, jobs, engine)} & writer=$!\n"
                       f"(for layer in {layers}; do igzip -dc $layer || exit 1; done > /dev/null) "
                       "& inflate=$!\n"
                       f"(for layer in {layers}; do openssl dgst -sha256 $layer || exit 1; done "
                       "> /dev/null) & digest=$!\n"
                       "rc=0; for job in $writer $inflate $digest; do wait $job || rc=1; done\n"
                       "exit $rc")
    sample.written_counted = False  # what its background jobs write is not in the shell's count
    out.unlink(missing_ok=True)
    return sample


def measure_skopeo(image, registry, workdir: Path, jobs: int) -> Sample:
    missing = [tool for tool in ("skopeo", "umoci", "mksquashfs") if not shutil.which(tool)]
    if missing:
        return Sample.failed("skopeo + umoci + mksquashfs", f"not installed: {missing}")
    work = workdir / f"skopeo-{image.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    steps = [
        run("skopeo copy", f"skopeo --insecure-policy copy -q --src-tls-verify=false "
            f"docker://{registry.host}/bench/{image.name}:1 oci:{work}/oci:latest"),
    ]
    if steps[-1].ok:
        steps.append(run("umoci raw unpack",
                         f"umoci raw unpack --image {work}/oci:latest {work}/rootfs"))
    if steps[-1].ok:
        steps.append(run("mksquashfs", f"mksquashfs {work}/rootfs {work}/out.sqfs -comp gzip "
                         f"-Xcompression-level {LEVEL} -b {BLOCK} -processors {jobs} "
                         "-noappend -quiet -no-progress -no-xattrs"))
    sample = Sample.combine("skopeo + umoci + mksquashfs", steps)
    shutil.rmtree(work, ignore_errors=True)
    return sample


def measure_charliecloud(image, tls_host: str | None, workdir: Path, jobs: int
                         ) -> list[Sample]:
    name = "Charliecloud: ch-image pull + ch-convert"
    if tls_host is None or not shutil.which("ch-image"):
        return [Sample.failed(name, "ch-image or the TLS registry is not available")]
    work = workdir / f"ch-{image.name}"
    shutil.rmtree(work, ignore_errors=True)
    shim = work / "shim"
    shim.mkdir(parents=True)
    # ch-image runs `env python3`: make that Debian's (with lark), not a venv's.
    (shim / "python3").symlink_to("/usr/bin/python3")
    env = {**os.environ, "USER": os.environ.get("USER", "root"),
           "CH_IMAGE_STORAGE": str(work / "storage"),
           "REQUESTS_CA_BUNDLE": str(workdir / "registry-tls" / "tls.crt"),
           "PATH": f"{shim}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    ref = f"{tls_host}/bench/{image.name}:1"
    pull = run("ch-image pull", f"ch-image --tls-no-verify --no-cache pull {ref}", env=env)
    results = []
    if pull.ok:
        convert = run("ch-convert (its own settings: gzip 9, 64 KiB blocks)",
                      f"ch-convert -i ch-image -o squash {ref} {work}/out.sqfs", env=env)
        results.append(Sample.combine(name, [pull, convert]))
        trees = list((work / "storage" / "img").glob("*"))
        if trees:
            same = run("mksquashfs (same settings)",
                       f"mksquashfs {trees[0]} {work}/same.sqfs -comp gzip "
                       f"-Xcompression-level {LEVEL} -b {BLOCK} -processors {jobs} "
                       "-noappend -quiet -no-progress -no-xattrs -all-root")
            results.append(Sample.combine("Charliecloud: ch-image pull + mksquashfs "
                                          "(same settings)", [pull, same]))
    else:
        results.append(Sample.combine(name, [pull]))
    shutil.rmtree(work, ignore_errors=True)
    return results


def median_load(rounds: list[dict]) -> dict:
    """The lookup round with the median throughput (the lower one of the middle two)."""
    return sorted(rounds, key=lambda result: result["rps"])[(len(rounds) - 1) // 2]


def median_run(samples: list[Sample]) -> Sample:
    """The run with the median wall time (the lower one of the middle two)."""
    ordered = sorted(samples, key=lambda sample: (not sample.ok, sample.wall))
    return ordered[(len(ordered) - 1) // 2]


class Ours:
    """`imagegw serve` in its own process, pulled through with PullImage."""

    def __init__(self, workdir: Path, registry, name: str, jobs: int, engine: str = "auto",
                 platforms: dict | None = None) -> None:
        from testbed.services import embedded_config, start_service

        self.workdir = workdir / f"ours-{name}"
        shutil.rmtree(self.workdir, ignore_errors=True)
        config = embedded_config(self.workdir, registry_url=registry.url,
                                 systems=("default", "second"))
        config["Platforms"].update(platforms or {})
        config["ConverterOptions"] = {"compressor": "gzip", "level": LEVEL,
                                      "blockSize": BLOCK, "jobs": jobs, "gzipEngine": engine}
        # Every client of the benchmark is one anonymous caller on 127.0.0.1: lift the
        # per-caller limits (the fair share is measured by tests/integration/test_fair_share).
        config["Limits"] = {"maxStreamsPerCaller": 1000, "maxCallsPerCaller": 1000,
                            "maxStreamsTotal": 2000, "maxCallsTotal": 2000}
        self.registry = registry
        self.service = start_service("serve", config, self.workdir)
        self.pid = self.service.process.pid

    def pull(self, reference: str, system: str = "default"):
        from imagegw.v1 import gateway_service_pb2 as pb

        with self.service.channel() as channel:
            from imagegw.v1 import gateway_service_pb2_grpc as pb_grpc

            stub = pb_grpc.GatewayServiceStub(channel)
            return list(stub.PullImage(pb.PullImageRequest(system=system, reference=reference),
                                       timeout=7200))

    def measured_pull(self, label: str, reference: str, system: str = "default") -> Sample:
        from imagegw.v1 import image_pb2

        offset = _log_offset(self.registry)
        io_before, cpu_before = read_io(self.pid), cpu_seconds(self.pid)
        built_before = self.conversions()
        start = time.perf_counter()
        with TreeSampler(self.pid) as sampler:
            responses = self.pull(reference, system)
        wall = time.perf_counter() - start
        io_after, cpu_after = read_io(self.pid), cpu_seconds(self.pid)
        written = (io_after.get("write_bytes", 0) - io_before.get("write_bytes", 0)) - (
            io_after.get("cancelled_write_bytes", 0) - io_before.get("cancelled_write_bytes", 0))
        final = responses[-1].image
        sample = Sample(label, wall=wall, cpu=cpu_after - cpu_before, peak_rss=sampler.peak,
                        written=written, ok=final.state == image_pb2.IMAGE_STATE_READY)
        sample.note = (f"blob downloads {_blob_gets(self.registry, offset)}, "
                       f"conversions {self.conversions() - built_before}, "
                       f"image {final.size_bytes / 1e6:.1f} MB")
        if not sample.ok:
            sample.note += f"; failed: {final.failure.message}"
        sample.image_bytes = final.size_bytes  # type: ignore[attr-defined]
        return sample

    def conversions(self) -> int:
        return len(re.findall(r"pipeline\.squashfs.*built ", self.service.log()))

    def stop(self) -> None:
        self.service.stop()


# -- gateway-level checks -----------------------------------------------------------


def lookup_load(address: str, reference: str, seconds: float, clients: int = 200,
                processes: int = 2) -> dict:
    per_process = clients // processes
    procs = [subprocess.Popen([PYTHON, "-m", "bench.load", "client", address, "--reference",
                               reference, "--clients", str(per_process), "--duration",
                               str(seconds)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    results = [json.loads(proc.communicate(timeout=seconds + 120)[0]) for proc in procs]
    latencies = sorted(x for r in results for x in r["latencies"])
    count = len(latencies)
    elapsed = max(r["elapsed"] for r in results)

    def pct(q: float) -> float:
        return latencies[min(count - 1, int(q * count))] * 1000 if count else float("nan")

    return {"rps": count / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "errors": sum(r["errors"] for r in results), "count": count}


def noop_lookup_load(workdir: Path, reference: str, seconds: float, *, aio: bool = False) -> dict:
    address_file = workdir / "noop.address"
    address_file.unlink(missing_ok=True)
    server = subprocess.Popen([PYTHON, "-m", "bench.load", "noop", *(["--aio"] if aio else []),
                               str(address_file)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not address_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return lookup_load(address_file.read_text().strip(), reference, seconds)
    finally:
        server.terminate()
        server.wait(15)


def concurrent_pulls(workdir: Path, registry, jobs: int, count: int = 100) -> dict:
    import grpc

    from imagegw.v1 import gateway_service_pb2 as pb
    from imagegw.v1 import gateway_service_pb2_grpc as pb_grpc
    from imagegw.v1 import image_pb2
    from testbed import layers as L
    from testbed.images import push_image

    layers = [L.layer(*[L.file(f"d{n}/f{i}", os.urandom(4096)) for i in range(200)])
              for n in range(3)]
    push_image(registry.url, "bench/dedup", "1", layers)
    ours = Ours(workdir, registry, "dedup", jobs)
    offset = _log_offset(registry)
    states: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()
    try:
        with ours.service.channel() as channel:
            stub = pb_grpc.GatewayServiceStub(channel)
            barrier = threading.Barrier(count)

            def one() -> None:
                barrier.wait()
                try:
                    responses = list(stub.PullImage(pb.PullImageRequest(
                        system="default", reference="testreg/bench/dedup:1"), timeout=600))
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"{exc.code().name}: {exc.details()}")
                    return
                with lock:
                    states.append(responses[-1].image.state)
                    if responses[-1].image.state != image_pb2.IMAGE_STATE_READY:
                        failures.append(f"ended in state {responses[-1].image.state}: "
                                        f"{responses[-1].image.failure.message}")

            start = time.perf_counter()
            threads = [threading.Thread(target=one) for _ in range(count)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(600)
            wall = time.perf_counter() - start
        return {"pulls": count, "ready": states.count(image_pb2.IMAGE_STATE_READY),
                "conversions": ours.conversions(), "blob_downloads": _blob_gets(registry, offset),
                "wall": wall, "failures": sorted(set(failures))}
    finally:
        ours.stop()


# -- report -------------------------------------------------------------------------


def machine() -> list[str]:
    def out(command: list[str]) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    model = next((line.split(":", 1)[1].strip() for line in out(["lscpu"]).splitlines()
                  if line.startswith("Model name")), "?")
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "0")
    from imagegw.pipeline.decompress import GZIP_BACKEND

    shim = gzip_engine.find_shim()
    return [
        f"CPU: {model}, {os.cpu_count()} cores; memory {int(memory) / 1024**2:.1f} GiB",
        f"kernel {platform.release()}; Python {platform.python_version()}; "
        f"gzip decoding in the worker: {GZIP_BACKEND}; gzip blocks in imagegw's tar2sqfs: "
        f"{gzip_engine.resolve(ConverterOptions()).gzip_engine} "
        f"({out(['dpkg-query', '-W', '-f', 'libdeflate ${Version}', 'libdeflate0'])}, {shim}); "
        f"imagegw's tar2sqfs allocates with "
        f"{writer_malloc.resolve(ConverterOptions()).writer_allocator} "
        f"({out(['dpkg-query', '-W', '-f', 'jemalloc ${Version}', 'libjemalloc2'])}, "
        f"MALLOC_CONF {writer_malloc.MALLOC_CONF})",
        f"{out(['tar2sqfs', '--version']).splitlines()[0] if shutil.which('tar2sqfs') else ''}; "
        f"{out(['mksquashfs', '-version']).splitlines()[0] if shutil.which('mksquashfs') else ''}",
        f"{out(['skopeo', '--version'])}; {out(['umoci', '--version'])}; "
        f"charliecloud {out(['dpkg-query', '-W', '-f', '${Version}', 'charliecloud'])}",
    ]


def table(samples: list[Sample], floor: Sample | None, best_peer: Sample | None) -> list[str]:
    lines = ["| contender | wall s | CPU s | peak RSS MiB | written MB | × floor | × best peer | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for s in samples:
        if not s.ok and not s.wall:
            lines.append(f"| {s.name} | – | – | – | – | – | – | did not run: {s.note} |")
            continue
        vs_floor = f"{s.wall / floor.wall:.2f}" if floor and floor.ok and floor.wall else "–"
        vs_peer = (f"{s.wall / best_peer.wall:.2f}" if best_peer and best_peer.wall else "–")
        status = "" if s.ok else "FAILED "
        steps = ", ".join(f"{step.name} {step.wall:.1f}s" for step in s.steps)
        note = "; ".join(x for x in (status + s.note, steps) if x.strip())
        written = f"{s.written / 1e6:.0f}" if s.written_counted else "–"
        lines.append(f"| {s.name} | {s.wall:.1f} | {s.cpu:.1f} | {s.peak_rss / MIB:.0f} | "
                     f"{written} | {vs_floor} | {vs_peer} | {note} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="size of the test images (1.0: ~500 MB and ~1.2 GB)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/imagegw-bench"),
                        help="images, registry and scratch (test images are reused)")
    parser.add_argument("--results", type=Path, help="also write the report (markdown) here")
    parser.add_argument("--lookup-seconds", type=float, default=5.0)
    parser.add_argument("--skip", action="append", default=[],
                        choices=["skopeo", "charliecloud", "lookups", "dedup", "pulls",
                                 "remote", "many"])
    parser.add_argument("--many-files", type=int, default=400_000,
                        help="files of the many-layers image (× scale); it also runs at half")
    parser.add_argument("--image", action="append", default=[],
                        help="measure only this test image (repeatable)")
    parser.add_argument("--remote-mib", type=int, default=1024,
                        help="size of the file the remote-publish rows copy (MiB)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure the floor, the bound, the cold pull and the lookups "
                             "this many times each, taking turns, and report the median run "
                             "(timings on a shared machine drift)")
    args = parser.parse_args(argv)
    jobs = os.cpu_count() or 1
    # imagegw runs on what this machine has (the shim is built by scripts/setup); the bound
    # takes the same writer, and both floors are measured either way.
    engine = gzip_engine.resolve(ConverterOptions()).gzip_engine
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    from testbed.registry import start_registry

    log(f"building test images at scale {args.scale:g} (reused when made before)")
    images = [] if "pulls" in args.skip else bench_images.build_images(workdir, args.scale)
    if "pulls" not in args.skip and "many" not in args.skip:
        many = max(400, int(args.many_files * args.scale))
        images += [bench_images.build_many_layers_image(workdir, count)
                   for count in (many, many // 2)]
    images = [image for image in images if not args.image or image.name in args.image]
    registry_dir = workdir / "registry"
    shutil.rmtree(registry_dir, ignore_errors=True)
    registry = start_registry(registry_dir)
    tls_process = None
    head: list[str] = [f"# imagegw fast-path benchmark ({datetime.date.today()}, "
                       f"scale {args.scale:g})", "", "## Machine", ""]
    head += [f"- {line}" for line in machine()]
    report: list[str] = ["", f"Settings for every contender: gzip level {LEVEL}, block size {BLOCK}, "
               f"{jobs} compressor threads; tar2sqfs (ours and the floors) queues "
               f"{queued_blocks(jobs)} blocks for them "
               f"(ch-convert: its fixed settings, see its row). imagegw's tar2sqfs compresses "
               f"gzip blocks with {engine}; \"× floor\" is against tar2sqfs as Debian builds it "
               "(zlib, glibc's malloc), the floor the issue defines; the libdeflate floor is the "
               "same writer as imagegw's (libdeflate, and imagegw's allocator, see Machine). "
               "The peers' mksquashfs uses zlib.", ""]
    summary: list[str] = []
    try:
        for image in images:
            log(f"pushing {image.name}: {image.files} files, "
                f"{image.compressed_bytes / 1e6:.0f} MB compressed, "
                f"{image.uncompressed_bytes / 1e6:.0f} MB uncompressed")
            bench_images.push(registry.url, f"bench/{image.name}", "1", image)
        tls_host = None
        if "charliecloud" not in args.skip:
            tls_process, tls_host = start_tls_registry(workdir / "registry-tls",
                                                       registry_dir / "storage")
        lookup_reference = None
        ours_first: Ours | None = None
        for image in images:
            reference = f"testreg/bench/{image.name}:1"
            warm_blobs = partial(bench_images.warm_registry_blobs, registry_dir / "storage", image)
            floors: list[Sample] = []
            fast_floors: list[Sample] = []
            bounds: list[Sample] = []
            colds: list[Sample] = []
            ours = None
            for attempt in range(1, args.repeat + 1):
                run_label = f" (run {attempt} of {args.repeat})" if args.repeat > 1 else ""
                log(f"{image.name}: floor{run_label}")
                floors.append(measure_floor(image, workdir, jobs))
                log(f"{image.name}: libdeflate floor{run_label}")
                fast_floors.append(measure_floor(image, workdir, jobs, "libdeflate"))
                log(f"{image.name}: bound{run_label}")
                bounds.append(measure_bound(image, workdir, jobs, engine))
                log(f"{image.name}: imagegw cold pull{run_label}")
                if ours is not None:
                    ours.stop()  # each cold pull starts with empty caches
                ours = Ours(workdir, registry, image.name, jobs, engine)
                warm_blobs()
                colds.append(ours.measured_pull("imagegw: cold pull → published image",
                                                reference))
            assert ours is not None
            floor, bound, cold = median_run(floors), median_run(bounds), median_run(colds)
            fast_floor = median_run(fast_floors)
            worker_hwm = hwm(ours.pid)
            warm = ours.measured_pull("imagegw: warm re-pull (same system)", reference)
            second = ours.measured_pull("imagegw: pull for a second system "
                                        "(conversion cache)", reference, "second")
            if ours_first is None:
                ours_first, lookup_reference = ours, reference
            else:
                ours.stop()
            peers: list[Sample] = []
            if "skopeo" not in args.skip:
                log(f"{image.name}: skopeo + umoci + mksquashfs")
                warm_blobs()
                peers.append(measure_skopeo(image, registry, workdir, jobs))
            if "charliecloud" not in args.skip:
                log(f"{image.name}: Charliecloud")
                warm_blobs()
                peers += measure_charliecloud(image, tls_host, workdir, jobs)
            ran = [p for p in peers if p.ok]
            best = min(ran, key=lambda p: p.wall) if ran else None
            report += [f"## {image.name}: {image.files} files in {len(image.layers)} layers, "
                       f"{image.compressed_bytes / 1e6:.0f} MB compressed, "
                       f"{image.uncompressed_bytes / 1e6:.0f} MB uncompressed", ""]
            report += table([cold, floor, fast_floor, bound, *peers], floor, best)
            report += ["", "| after the cold pull | wall s | notes |", "|---|---:|---|",
                       f"| {warm.name} | {warm.wall:.3f} | {warm.note} |",
                       f"| {second.name} | {second.wall:.3f} | {second.note} |", ""]
            image_bytes = getattr(cold, "image_bytes", 0)
            floor_ratio = cold.wall / floor.wall if floor.ok and floor.wall else float("nan")
            written_ratio = cold.written / (image.compressed_bytes + image_bytes) \
                if image_bytes else float("nan")
            report.append(f"- python process peak RSS (VmHWM of `imagegw serve`, gateway and "
                          f"worker): {worker_hwm / MIB:.0f} MiB; whole tree incl. tar2sqfs: "
                          f"{cold.peak_rss / MIB:.0f} MiB")
            report.append(f"- bytes written / (compressed layers + image): {written_ratio:.2f}")
            if args.repeat > 1:
                pairs = ", ".join(f"{c.wall / f.wall:.2f}×"
                                  for f, c in zip(floors, colds, strict=True))
                report.append(
                    f"- {args.repeat} runs each, taking turns; the table shows the median run. "
                    f"Floor: {', '.join(f'{x.wall:.1f}' for x in floors)} s; libdeflate floor: "
                    f"{', '.join(f'{x.wall:.1f}' for x in fast_floors)} s; bound: "
                    f"{', '.join(f'{x.wall:.1f}' for x in bounds)} s; cold pull: "
                    f"{', '.join(f'{x.wall:.1f}' for x in colds)} s; each cold pull over the "
                    f"floor run just before it: {pairs}")
            report.append("")
            summary += [
                f"{image.name}: cold pull {cold.wall:.1f}s = {floor_ratio:.2f}× floor "
                f"({floor.wall:.1f}s) [target ≤ 1.2]; "
                + (f"{cold.wall / fast_floor.wall:.2f}× the libdeflate floor ({fast_floor.wall:.1f}s, "
                   "the same writer as imagegw's)" if fast_floor.ok and fast_floor.wall else
                   f"the libdeflate floor did not run: {fast_floor.note}")
                + (f", {cold.wall / best.wall:.2f}× best peer ({best.name} {best.wall:.1f}s)"
                   if best else ""),
                f"{image.name}: the bound (the {engine} floor + inflating and digesting every "
                f"layer, C tools, at once) {bound.wall:.1f}s = {bound.wall / floor.wall:.2f}× floor; "
                f"the cold pull {cold.wall / bound.wall:.2f}× the bound"
                if bound.ok and bound.wall and floor.ok and floor.wall else
                f"{image.name}: the bound did not run: {bound.note}",
                f"{image.name}: bytes written {written_ratio:.2f}× [target ≤ 1.1]; "
                f"peak RSS tree {cold.peak_rss / MIB:.0f} MiB, python {worker_hwm / MIB:.0f} MiB "
                "[target < 512]",
                f"{image.name}: warm re-pull {warm.wall:.3f}s ({warm.note}) [target ≤ 0.3 s, "
                "0 downloads]; second system "
                f"{second.wall:.3f}s ({second.note})",
            ]
        if "lookups" not in args.skip and ours_first is not None and lookup_reference:
            log("lookups: 200 concurrent clients, gateway vs no-op servicer")
            gateways: list[dict] = []
            noops: list[dict] = []
            aio_noops: list[dict] = []
            for _ in range(args.repeat):  # taking turns, as the cold pulls and floors do
                gateways.append(lookup_load(ours_first.service.address, lookup_reference,
                                            args.lookup_seconds))
                noops.append(noop_lookup_load(workdir, lookup_reference, args.lookup_seconds))
                aio_noops.append(noop_lookup_load(workdir, lookup_reference, args.lookup_seconds,
                                                  aio=True))
            gateway, noop = median_load(gateways), median_load(noops)
            aio_noop = median_load(aio_noops)
            ratio = gateway["rps"] / noop["rps"] if noop["rps"] else float("nan")
            aio_ratio = gateway["rps"] / aio_noop["rps"] if aio_noop["rps"] else float("nan")
            report += ["## Lookups from 200 concurrent clients", "",
                       "| server | lookups/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|"]
            for label, r in (("imagegw gateway (SQLite; asyncio server)", gateway),
                             ("no-op servicer, threaded server (imagegw.rpc.server)", noop),
                             ("no-op servicer, asyncio server (the gateway's)", aio_noop)):
                report.append(f"| {label} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
                              f"{r['p99_ms']:.1f} | {r['errors']} |")
            if args.repeat > 1:
                def rates(rounds: list[dict]) -> str:
                    return ", ".join(f"{result['rps']:.0f}" for result in rounds)

                report += [
                    "", f"- {args.repeat} rounds of {args.lookup_seconds:g} s each, taking turns; the "
                    f"table shows the median round. Gateway: "
                    f"{rates(gateways)}/s; no-op: {rates(noops)}/s; asyncio no-op: "
                    f"{rates(aio_noops)}/s"]
            report.append("")
            summary.append(f"lookups: {gateway['rps']:.0f}/s vs no-op {noop['rps']:.0f}/s = "
                           f"{ratio:.2f}× [target ≥ 0.8]; p50/p99 {gateway['p50_ms']:.1f}/"
                           f"{gateway['p99_ms']:.1f} ms (no-op {noop['p50_ms']:.1f}/"
                           f"{noop['p99_ms']:.1f} ms); vs a no-op on the gateway's asyncio "
                           f"server {aio_noop['rps']:.0f}/s = {aio_ratio:.2f}×")
        if ours_first is not None:
            ours_first.stop()
        if "remote" not in args.skip:
            from bench.remote import measure_remote_publish

            log(f"remote publish: {args.remote_mib} MiB to a loopback sshd, scp and ours")
            rows, line = measure_remote_publish(workdir, args.remote_mib * MIB, args.repeat)
            report += ["## Remote publish over SSH (loopback sshd)", "", *table(rows, None, None),
                       ""]
            summary.append(line)
        if "remote" not in args.skip and images:
            from bench.remote import measure_remote_pull

            image = max(images, key=lambda image: image.compressed_bytes)  # longest copy
            log(f"remote pull: {image.name}, cold to a local and to a remote system")
            rows, line = measure_remote_pull(
                workdir, registry, image.name, f"testreg/bench/{image.name}:1", jobs, engine,
                args.repeat,
                warm=partial(bench_images.warm_registry_blobs, registry_dir / "storage", image))
            report += [f"## Remote pull of {image.name}: the copy overlapped with the "
                       "conversion", "", *table(rows, rows[0], None), ""]
            summary.append(line)
        if "dedup" not in args.skip:
            log("100 concurrent pulls of one image")
            dedup = concurrent_pulls(workdir, registry, jobs)
            report += ["## 100 concurrent pulls of one (small, new) image", "",
                       f"- {dedup['ready']} of {dedup['pulls']} streams reached READY; "
                       f"conversions: {dedup['conversions']}; blob downloads: "
                       f"{dedup['blob_downloads']}; wall {dedup['wall']:.1f}s", *[
                           f"- a stream that did not reach READY: {failure}"
                           for failure in dedup["failures"]], ""]
            summary.append(f"100 concurrent pulls: {dedup['ready']} READY, "
                           f"{dedup['conversions']} conversion(s) [target: 100 READY, 1]")
    finally:
        if tls_process is not None:
            tls_process.terminate()
            tls_process.wait(10)
        registry.stop()
    report = head + ["", "## Summary (targets in brackets)", ""] + \
        [f"- {line}" for line in summary] + report
    text = "\n".join(report) + "\n"
    print(text)
    if args.results:
        args.results.write_text(text)
        log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
