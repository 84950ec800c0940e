"""Benchmark: retrieving a real CT series from a live Orthanc, MedSeg side by side with references, same run.

Run from the project root (needs the Debian packages orthanc and orthanc-dicomweb):

    .venv/bin/python Testing/benchmarks/bench_pacs.py [--repeat 3] [--series dcm_qa_ct/In/Philips]

It starts Orthanc on free 127.0.0.1 ports, stores the series once, then times (median of ``--repeat``):

- reference "pynetdicom bare": a plain pynetdicom C-GET whose C-STORE handler only writes the received bytes to
  files (what any C-GET client must at least do);
- reference "Orthanc REST archive": Orthanc's own ``/series/{id}/archive`` ZIP download (server-side ceiling);
- MedSeg ``pacs.dimse.get`` (C-FIND to find the level, C-GET, files into the database layout, indexing);
- MedSeg ``pacs.dimse.move`` (own storage SCP) and ``pacs.dicomweb.retrieve`` (WADO-RS).

It prints MB/s and instances/s for each and MedSeg's ratio to the bare pynetdicom client.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedSegExtension"))
sys.path.insert(0, str(ROOT / "Testing" / "Python"))

import pydicom  # noqa: E402

from MedSegLib.pacs import PacsNode, dicomweb, dimse  # noqa: E402
from orthanc_fixture import MEDSEG_AET, ORTHANC_AET, PASSWORD, USER, OrthancServer  # noqa: E402


def bare_cget(node: PacsNode, study: str, series: str, out_dir: Path) -> int:
    """Plain pynetdicom C-GET writing each received instance to a file, nothing else."""
    from pynetdicom import AE, StoragePresentationContexts, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    out_dir.mkdir(parents=True, exist_ok=True)
    ae = AE(ae_title=node.calling_aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for context in StoragePresentationContexts[:120]:
        ae.add_requested_context(context.abstract_syntax)
        roles.append(build_role(context.abstract_syntax, scp_role=True))
    count = [0]

    def handle(event):
        (out_dir / f"{event.request.AffectedSOPInstanceUID}.dcm").write_bytes(event.encoded_dataset())
        count[0] += 1
        return 0x0000

    assoc = ae.associate(
        node.host, node.port, ae_title=node.ae_title, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, handle)]
    )
    identifier = pydicom.Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID, identifier.SeriesInstanceUID = "SERIES", study, series
    for _status, _ds in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
        pass
    assoc.release()
    return count[0]


def timed(function: Callable[[Path], object], repeat: int, work: Path, name: str) -> List[float]:
    times = []
    for index in range(repeat):
        target = work / f"{name}-{index}"
        started = time.perf_counter()
        function(target)
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--series", default="dcm_qa_ct/In/Philips", help="folder under ../shared/data")
    args = parser.parse_args()
    folder = ROOT.parent / "shared" / "data" / args.series
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.name != "DIRFILE")
    if not files:
        print(f"no files under {folder}")
        return 1
    megabytes = sum(Path(f).stat().st_size for f in files) / 1e6
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        server = OrthancServer(work / "orthanc")
        (work / "orthanc").mkdir()
        server.start()
        try:
            node = PacsNode(
                ae_title=ORTHANC_AET,
                host="127.0.0.1",
                port=server.dicom_port,
                calling_aet=MEDSEG_AET,
                storage_port=server.medseg_port,
                timeout_s=10,
                web_url=server.web_url,
                username=USER,
                password=PASSWORD,
            )
            started = time.perf_counter()
            stored = dimse.store(node, files)
            store_s = time.perf_counter() - started
            orthanc_id = server.rest("/tools/lookup", method="POST", data=series.encode())[0]["ID"]
            cases = {
                "pynetdicom bare C-GET": lambda t: bare_cget(node, study, series, t),
                "Orthanc REST archive": lambda t: server.rest(f"/series/{orthanc_id}/archive"),
                "MedSeg C-GET -> database": lambda t: dimse.get(node, series, t),
                "MedSeg C-MOVE -> database": lambda t: dimse.move(node, series, t, bind_address="127.0.0.1"),
                "MedSeg WADO-RS -> database": lambda t: dicomweb.retrieve(node, series, t),
            }
            results = {
                name: statistics.median(timed(case, args.repeat, work, str(i)))
                for i, (name, case) in enumerate(cases.items())
            }
        finally:
            server.stop()
    print(
        f"series {args.series}: {len(files)} instances, {megabytes:.1f} MB; C-STORE of it took {store_s:.2f} s "
        f"({stored.sent} sent, {megabytes / store_s:.1f} MB/s)"
    )
    bare = results["pynetdicom bare C-GET"]
    for name, seconds in results.items():
        print(
            f"{name:<30} {seconds:7.3f} s  {megabytes / seconds:7.1f} MB/s  {len(files) / seconds:7.1f} inst/s  "
            f"x{seconds / bare:5.2f} of bare"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
