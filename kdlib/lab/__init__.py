"""The lab: how the chapter-2 experiments are defined, trained and stored.

Data flows one way through its modules::

    config      what a run is: TrainConfig, StudentSpec, Arm, device, precision, threads, profiles
    data        the datasets as device-resident tensors, fixed splits
    models      MLP (teacher), StackedMLP (S students as one model)
    metrics     logits, accuracy, recorded test metrics, the bias shift
    train       the one training loop, fit(), with its objectives (cross-entropy, distillation)
    records     typed records (StudentRecord, TeacherRecord) and the one check every reader applies
    store       run keys, the results file, atomic writes, the lock, shards of a results file
    provenance  what produced a run: versions, git state, device, instruction set
    cache       the teacher cache and the committed teacher logits
    results     which results (the best committed profile), records as frames, provenance
    analysis    summaries over seeds, paired comparisons, tuned screens (kdlib.stats underneath)
    prereg      hypothesis files: the rules that derive them, their students, the confirmatory tests
    profile     an experiment at one scale (Profile), the configs of its runs and their keys
    experiments the table of scales and the experiments, each one declaration
    shards      an experiment's students in N parts of whole stack groups, balanced by cost; status
    run         run_experiment(): teacher stage, then students in stacked groups, into the store
    cluster     submit(): a teacher job, then a job array over the shards, through submitit

A module imports only those above it (``tests/test_layers.py``). The statistics (:mod:`kdlib.stats`)
sit below the lab; the report side (:mod:`kdlib.report`) only
formats what :mod:`kdlib.lab.results`, :mod:`kdlib.lab.analysis` and :mod:`kdlib.lab.prereg` return;
nothing here imports it.
"""
