"""The run directory: what ``compress --out RUN`` holds, and the only code that writes or reads it.

Training writes through this package; export, evaluation and the CLI read through it (``from compressor import
rundir; rundir.read_results(run)``). It imports no torch.

Layout (format 2; a format-1 directory is still read, see *Versions*)::

    RUN/
      config.json                  the RunConfig of the last invocation (CONFIG_FILE)
      results.json                 the run record, RunRecord (RESULTS_FILE)
      masks/mask_<R>x.npy          each acceleration's sampling mask, float32 (H, W), uncentred (MASKS_FOLDER)
      zero_filled_<R>x_<split>.json   per-slice metrics of the zero-filled images
      .compress.lock               held (fcntl.flock) by the one compress run using the directory (LOCK_FILE)
      benchmark.json, .csv         latency of the exported files, BenchmarkRecord (BENCHMARK_FILE; compress benchmark)
      exports/                     ONNX files (EXPORTS_FOLDER; compress export)
        exports.json               the files and their validation, ExportsRecord (EXPORTS_FILE)
      report/                      tables and figures (REPORT_FOLDER; compress report)
      stages/<role>[-<method>]-<arch>-<key>/   one trained stage (STAGES_FOLDER)
        stage.json                 the stage record, StageRecord (STAGE_FILE)
        history.json               [{"epoch", "train_loss", "val_loss", "lr", "seconds", "terms"}] (HISTORY_FILE)
        best.safetensors, best_<part>.safetensors, last.safetensors   weights, tensors only (best_weights_file)
        checkpoint.pt              resume state, TrainingCheckpoint: plain tensors and numbers (CHECKPOINT_FILE)
        tensorboard/               TensorBoard event files of the training, one epoch per step (TENSORBOARD_FOLDER;
                                   train.tensorboard, on by default; compressor.training.watch)
        reconstructions_<split>.h5 datasets reconstruction, target, zero_filled (S, H, W) float32, scale (S,),
                                   volume (S,) bytes, slice_index (S,); normalised units; the images are what
                                   the metrics score: the image_size centre of the grid, the real image of
                                   1-channel models, the magnitude of 2-channel ones, which also store
                                   target_complex (S, H, W) complex64 on the model's grid (COMPLEX_TARGET_KEY)
        metrics_<split>.json       {"split", "volume": [...], "slice_index": [...], "<metric>": [...]}

Modules: :mod:`~compressor.rundir.layout` (names and :class:`RunLayout`, the paths), :mod:`~compressor.rundir.roles`
(:class:`Role`, setups, tasks), :mod:`~compressor.rundir.results` (``results.json``), :mod:`~compressor.rundir.stage`
(``stage.json``, ``checkpoint.pt``), :mod:`~compressor.rundir.inputs` (``config.json``, masks),
:mod:`~compressor.rundir.benchmark` and :mod:`~compressor.rundir.exports` (what deployment writes),
:mod:`~compressor.rundir.stage_keys` (the stage-key rule), :mod:`~compressor.rundir.lock` (one run at a time; readers
refuse a run in progress), :mod:`~compressor.rundir.merge` (several runs in one directory),
:mod:`~compressor.rundir.version` (the format version). Every value is read with :mod:`compressor.json_record` (one-line
errors naming the file and the key). A new file of the run directory gets its name in ``layout``, a record with
``to_json``/``from_json`` (a :class:`~compressor.json_record.JsonRecord` where its keys are its fields) and a read and
a write function beside it.

Roles (:class:`Role`, each with its report label): ``zero_filled``, ``teacher``, ``student``, ``std_kd``,
``sft_teacher``, ``sft_kd``, ``sft_kd_random`` (Table 5), ``sft_teacher_scratch`` (Fig. 7's from-scratch
reference of a warm-started run; recorded, never a KD teacher).

Versions: :data:`FORMAT_VERSION` is written; :data:`READABLE_FORMATS` are read. Format 1 (every committed run
under ``docs/results``) has no ``masks`` (export rebuilds a mask from ``config.json`` and checks its digest);
a newer format is refused with one line naming the version found and the ones this tool reads.

Several invocations may share a directory: stages are reused by key (:func:`stage_determinants`), one run at a
time (:func:`run_lock`), and :func:`merge_results` keeps earlier records a run did not produce when their config
differs only in what ran.
"""

from compressor.rundir.benchmark import (
    BenchmarkRecord,
    ModelTiming,
    read_benchmark,
    write_benchmark,
    write_benchmark_files,
)
from compressor.rundir.exports import ExportEntry, ExportsRecord, PrecisionCheckEntry, read_exports, write_exports
from compressor.rundir.inputs import load_mask_values, read_config, save_mask, write_config
from compressor.rundir.layout import (
    BENCHMARK_FILE,
    BENCHMARK_TABLE_FILE,
    BEST_WEIGHTS,
    BEST_WEIGHTS_FILE,
    CHECKPOINT_FILE,
    COMPLEX_TARGET_KEY,
    CONFIG_FILE,
    EXPORTS_FILE,
    EXPORTS_FOLDER,
    HISTORY_FILE,
    KD_LOSS_PART,
    LAST_WEIGHTS,
    LAST_WEIGHTS_FILE,
    LOCK_FILE,
    MASKS_FOLDER,
    OUTPUT_MODEL_PART,
    REPORT_FOLDER,
    RESULTS_FILE,
    STAGE_FILE,
    STAGES_FOLDER,
    STUDENT_BRANCHES_PART,
    TENSORBOARD_FOLDER,
    WEIGHTS_SUFFIX,
    RunLayout,
    acceleration_label,
    best_weights_file,
    mask_file,
    metrics_file,
    reconstructions_file,
    weights_file,
    zero_filled_file,
)
from compressor.rundir.lock import refuse_if_training, run_lock
from compressor.rundir.merge import SELECTION_FIELDS, config_differences, merge_results
from compressor.rundir.results import (
    CoilCompressionRecord,
    MaskRecord,
    MetricSummary,
    ModelResult,
    ProcessesRecord,
    RunRecord,
    read_results,
    write_results,
)
from compressor.rundir.roles import (
    KD_ROLES,
    ROLE_LABELS,
    ROLES,
    SETUPS,
    STAGE_ROLES,
    STUDENT_ROLES,
    TASKS,
    Role,
    Setup,
    sr_interpolations,
)
from compressor.rundir.stage import (
    StageRecord,
    TrainingCheckpoint,
    read_stage,
    read_stage_if_complete,
    write_stage,
)
from compressor.rundir.stage_keys import (
    KEY_FIELDS_V1,
    NOT_DETERMINANTS,
    ONLY_FOR_TASK,
    STAGE_DEFAULTS,
    key_fields,
    section_defaults,
    stage_determinants,
)
from compressor.rundir.version import FORMAT_VERSION, READABLE_FORMATS

__all__ = [
    "BENCHMARK_FILE", "BENCHMARK_TABLE_FILE", "BEST_WEIGHTS", "BEST_WEIGHTS_FILE", "CHECKPOINT_FILE",
    "COMPLEX_TARGET_KEY", "CONFIG_FILE", "EXPORTS_FILE", "EXPORTS_FOLDER", "FORMAT_VERSION", "HISTORY_FILE",
    "KD_LOSS_PART", "KD_ROLES", "KEY_FIELDS_V1", "LAST_WEIGHTS", "LAST_WEIGHTS_FILE", "LOCK_FILE", "MASKS_FOLDER",
    "NOT_DETERMINANTS",
    "ONLY_FOR_TASK", "OUTPUT_MODEL_PART", "READABLE_FORMATS", "REPORT_FOLDER", "RESULTS_FILE", "ROLES", "ROLE_LABELS",
    "SELECTION_FIELDS", "SETUPS", "STAGES_FOLDER", "STAGE_DEFAULTS", "STAGE_FILE", "STAGE_ROLES",
    "STUDENT_BRANCHES_PART", "STUDENT_ROLES", "TASKS", "TENSORBOARD_FOLDER", "WEIGHTS_SUFFIX",
    "BenchmarkRecord", "CoilCompressionRecord", "ExportEntry", "ExportsRecord", "MaskRecord", "MetricSummary",
    "ModelResult", "ModelTiming", "PrecisionCheckEntry", "ProcessesRecord", "Role", "RunLayout", "RunRecord", "Setup",
    "StageRecord", "TrainingCheckpoint",
    "acceleration_label", "best_weights_file", "config_differences", "key_fields", "load_mask_values", "mask_file",
    "merge_results", "metrics_file", "read_benchmark", "read_config", "read_exports", "read_results", "read_stage",
    "read_stage_if_complete", "reconstructions_file", "refuse_if_training", "run_lock", "save_mask",
    "section_defaults", "sr_interpolations", "stage_determinants", "weights_file", "write_benchmark",
    "write_benchmark_files", "write_config", "write_exports", "write_results", "write_stage", "zero_filled_file",
]
