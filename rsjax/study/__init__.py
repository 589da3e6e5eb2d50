"""The paper's study as one resumable sweep: certified vs practical robustness of randomized
smoothing (Maho, Furon, Le Merrer, ICASSP 2022) over a grid of (model, sigma, n, P_a, attack).

Pipeline (``run_sweep``), every stage appending JSON lines to the output directory as it goes:

1. **models**: each :class:`ModelEntry` is a given checkpoint or is trained with
   :func:`rsjax.train.train` (recipes ``standard``, ``gaussian`` = RandTrain, ``pgd`` = AdvTrain)
   and cached in ``$RSJAX_CACHE`` (default ``~/.cache/rsjax``) under
   ``checkpoints/<arch>-<recipe>-<hash>.ckpt``, the hash being that of the resolved training
   configuration and training data spec: an identical request reuses the file.
2. **accuracy** (``accuracy.jsonl``): clean accuracy of each base classifier f and, per sigma
   and n in ``eval_ns``, the accuracy of the practical smoothed classifier g_{sigma,n}
   (plurality vote of n micro-decisions f(x + sigma N_j), lowest-index ties) and of Cohen's
   PREDICT at ``predict_alpha`` (abstentions count as errors), on ``eval_images`` test images.
3. **certification** (``certify.jsonl``): Cohen's CERTIFY(x, n0, n, alpha) at every (model, sigma)
   for the first ``certify_images`` images of the seeded permutation of the test set (and at
   least all attacked images): prediction and radius R = sigma Phi^{-1}(p_A_lower) per image.
   Certified accuracy at r = fraction of these images correctly classified with R >= r.
4. **reference** (``reference.jsonl``): the reference label of eq. (4), g_sigma(x_o), by Cohen's
   PREDICT with ``reference_n`` samples at ``reference_alpha`` for every attacked image and
   (model, sigma); ``reference='true'`` uses the true label instead (today's y, for comparison).
5. **attacks** (``records.jsonl``): the attacked images are the first ``n_images`` images of the
   seeded permutation that *every* model's base classifier f classifies correctly (so models
   are compared on the same images). Attack runs (:func:`enumerate_runs`): per model the no-RS
   baseline (oracle f) and per sigma and n the smoothed oracle with criterion

   * ``label`` (default; the deployed classifier): one query = one call of g_{sigma,n}, adversarial
     iff its plurality vote differs from the reference label; one run per (sigma, n, attack),
     verified at every P_a of ``pas``;
   * ``level`` (the authors' simulation shortcut, at ``level_ns`` for comparison, or everywhere
     with ``criterion='level'``): adversarial when at least k = ceil(n * P_a) of the n
     micro-decisions differ from the reference; one run per k, verified at its P_a.

   Each batch is measured by :func:`measure_batch` (the evaluator of :mod:`rsjax.verify`, whose
   calls are never charged to the attack): images with no smoothed reference are recorded
   apart (``smoothed_abstain`` / ``smoothed_wrong``); a clean image whose measured level reaches
   P_a is ``misclassified`` at distortion 0; the others are attacked and each output is
   verified at each P_a (ray search to the first point of level >= P_a). One record per image x
   setting (setting = run x P_a) holds the attacker's raw outcome (``l2``, ``linf``, queries,
   base-model evaluations, trace), the verified one (``verified_l2``, ``verified_linf``,
   ``verified_level`` with its Clopper-Pearson interval, ``verification_calls``), the reference
   (``reference``, ``reference_kind``) and the image's certified radius at the same sigma.

Randomness: one ``seed``. Stream s of image i uses ``fold_in(fold_in(key(seed), s), image_id)``
(s = 1 accuracy, 2 certification, 3 attacks, 5 reference label, 6 the evaluator's calls), so
every number depends on (seed, image, setting) only, never on batch composition, resumption,
device count or process count (:mod:`rsjax.study.tasks`).

Multi-process (JAX's distributed runtime, :mod:`rsjax.study.distributed`; tested with 2
processes on one machine): the same command is started as P processes, each given the
coordinator's ``HOST:PORT``, P and its id (``experiments/sweep.py --coordinator --num-processes
--process-id``, or ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, or
nothing under ``srun -n P``), which call ``jax.distributed.initialize`` before any other use of JAX;
every process writes into the same ``out`` directory (a shared file system across machines).
Process 0 creates the directory, trains the missing models (the others wait at a barrier, then
load the checkpoints from ``$RSJAX_CACHE``: share it too, or each machine trains its own
identical copy) and writes ``models.json`` / ``images.json``. Process i then attacks the images
``attacked[i::P]`` of every setting on a mesh of its ``jax.local_devices()``, computes their
reference labels, certifies its attacked images plus every P-th other certified image
(:func:`~rsjax.study.tasks.certify_share`: disjoint shares) and writes its own
``records.p<i>.jsonl``, ``reference.p<i>.jsonl`` and ``certify.p<i>.jsonl``; the ``accuracy``
stage (aggregates, not per image) runs on process 0 only. The per-image randomness does not
depend on the split, so every record equals the 1-process run's (tested). At the end the
processes meet at a barrier of the runtime and exchange how many tasks each left; if none,
process 0 writes the report, which reads every ``records*.jsonl`` / ``certify*.jsonl`` file,
de-duplicates by key and orders the records as ``images.json`` does, so its tables and intervals
are the 1-process run's (``experiments/report.py`` re-draws it at any time). No device
collective is used (only the runtime's barriers and key-value store), so CPU processes need no
collectives backend.

A process that dies (SIGKILL, lost machine) ends the whole job: the runtime's heartbeats
(``--heartbeat-timeout``, default 100 s) detect it and JAX aborts every other process ("the JAX
distributed service detected fatal errors"); a dead process 0 takes the coordinator with it and
the others abort at once. A process cannot rejoin a running job: start the whole job again (same
command, any free port). Each task's records are appended and fsynced in one write, so what was
finished is kept and nothing is computed twice (tested by SIGKILLing one of 2 processes).

Modules (each imports only those above it):

* :mod:`rsjax.study.distributed`: joining a multi-process job (flags, variables, Slurm), its
  barriers and key-value exchange;
* :mod:`rsjax.study.config`: :class:`SweepConfig`, :class:`ModelEntry`, the presets (data);
* :mod:`rsjax.study.models`: train or load the models (checkpoint cache);
* :mod:`rsjax.study.tasks`: settings, attack runs, image selection, batches, random streams;
* :mod:`rsjax.study.oracle`: :class:`ParamOracle` (the library's smoothed oracle with traced
  parameters) and its vote schedule;
* :mod:`rsjax.study.executor`: compiled attack / evaluator programs, multi-device dispatch;
* :mod:`rsjax.study.stages`: accuracy, certification, reference label, measurement of a batch
  and its records;
* :mod:`rsjax.study.run`: :func:`run_sweep`, the resumable task loop and its progress bar.

:mod:`rsjax.sweep` re-exports the public names of all of them (the historical single module).
"""
