"""Batch pipelines: a YAML list of steps run on many cases, locally or on a Dask cluster.

    from MedSegLib.pipeline import load_pipeline, resolve_cases, run_pipeline, RunOptions
    spec = load_pipeline("Resources/Pipelines/ct-organs.yaml")
    cases = resolve_cases(spec.inputs, ["/data/study1", "/data/study2"])
    summary = run_pipeline(spec, cases, Path("out"), RunOptions(workers=2))

The same calls work inside 3D Slicer (``Slicer --no-main-window --python-script``); see Docs/pipelines.md.
Modules: ``schema`` (YAML validation with line numbers), ``steps`` (registry), ``cases`` (inputs, hashes),
``runner`` (isolation, resume, atomic outputs, process pool and Dask backends), ``workers`` (thread limits).
"""

from MedSegLib.pipeline.cases import CaseSpec, resolve_cases
from MedSegLib.pipeline.runner import RunOptions, is_complete, medseg_version, run_case, run_pipeline
from MedSegLib.pipeline.schema import PipelineSpec, StepSpec, load_pipeline, parse_pipeline_text
from MedSegLib.pipeline.steps import Step, get_step, register_step, step_available, step_names

__all__ = [
    "CaseSpec",
    "PipelineSpec",
    "RunOptions",
    "Step",
    "StepSpec",
    "get_step",
    "is_complete",
    "load_pipeline",
    "medseg_version",
    "parse_pipeline_text",
    "register_step",
    "resolve_cases",
    "run_case",
    "run_pipeline",
    "step_available",
    "step_names",
]
