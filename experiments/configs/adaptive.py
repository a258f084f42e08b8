"""Adaptive weighting on digits: class-specialist teachers, five schemes, a safety floor (§VI).

    python -m mtkd_jax.main --config=experiments/configs/adaptive.py --workdir=runs/adaptive

`:small` is the quick setting of the tests and notebook. Runtime 1-15 min on 2 CPU cores (small:
under a minute); writes results.json, metrics.jsonl and the teachers' checkpoints to the workdir.
"""

import ml_collections

from mtkd_jax import configs


def get_config(arg=None):
  arg = configs.parse_arg(arg, small=False, seed=0)
  c = ml_collections.ConfigDict()
  c.experiment = "adaptive"  # module mtkd_jax.experiments.adaptive
  c.seed = arg.seed  # seed of initialisations (seed + s for seed s) and of the batch order
  c.data_seed = 0  # seed of the train/val/test split
  c.progress = True  # tqdm progress bars on stderr

  c.class_subsets = ((0, 1, 2, 3, 4), (3, 4, 5, 6, 7), (7, 8, 9, 0, 1))  # classes of teacher k
  c.teacher_hidden = (64,)  # hidden widths of every teacher's MLP
  c.teacher_steps = 300  # update steps per teacher
  c.teacher_learning_rate = 3e-3  # AdamW peak learning rate of the teachers

  c.schemes = ("static", "confidence", "label_aware", "learned", "hierarchical")  # compared
  c.confidence_tau = 0.1  # τ of confidence weights (confidence = 1 − H(p)/log V ∈ [0, 1])
  c.label_tau = 1.0  # τ of label-aware weights (w_k ∝ p_k(y)^{1/τ})
  c.hierarchical_epsilon = 0.01  # ε-smoothing of each scale in the hierarchical product
  c.gate_hidden = 32  # hidden width of the learned gate (on student input + probabilities)
  c.gate_loss_weight = 1.0  # weight of the gate's log-loss in the total loss
  c.gate_learning_rates = (1e-3, 3e-3, 1e-2)  # the learned gate re-run at each (convergence)

  c.safety_schemes = ("static", "confidence", "label_aware", "hierarchical")  # ± safety_floor
  c.unsafe_class = 9  # the output the safety teacher never gives
  c.sensitive_classes = (3, 5)  # inputs of these classes have sensitivity 1 (others 0)
  c.safety_floor = 0.5  # minimal safety teacher weight in sensitive contexts
  c.safety_threshold = 0.5  # sensitivity from which the full floor applies
  c.safety_temperature = 2.0  # temperature of the (conservative) safety teacher

  c.student_hidden = (64,)  # hidden widths of the student MLP
  c.num_seeds = 3  # students per scheme (vmapped over initialisation seeds)
  c.num_steps = 400  # update steps per student
  c.batch_size = 64  # batch size (divisible by the number of devices for the teachers)
  c.learning_rate = 3e-3  # AdamW peak learning rate of the students
  c.weight_decay = 1e-4  # AdamW weight decay
  c.warmup_steps = 20  # linear warm-up steps

  c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})  # -1: all devices
  c.partition_rules = ((r".*", ()),)  # replicate everything (tiny models)

  if arg.small:
    c.teacher_steps = 60
    c.num_steps = 60
    c.num_seeds = 2
    c.safety_schemes = ("label_aware",)
    c.gate_learning_rates = (1e-2,)
  return c
