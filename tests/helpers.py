"""Small builders shared by the EoMT, training, Outlier Exposure, anomaly-head and CLI tests."""

from lightning.pytorch.callbacks import Callback

from anomalyseg.models.eomt import small_eomt_config

# small_eomt_config settings of an EoMT of a few thousand parameters: 32 px windows of 2x2
# patches, 6 queries in 2 blocks.
TINY_EOMT = dict(
    image_size=32,
    patch_size=16,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_blocks=2,
    num_queries=6,
    num_register_tokens=1,
)


def tiny_eomt_config(**kw):
    """The tiny EoMT's config (``TINY_EOMT``), with ``kw`` on top."""
    return small_eomt_config(**{**TINY_EOMT, **kw})


class Crash(Callback):
    """Kill training when step ``step`` starts, as a dying notebook kernel would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("kernel died")


def run_cli(argv, capsys):
    """``anomalyseg argv`` in this process: (exit code, stdout, stderr)."""
    from anomalyseg import cli

    try:
        cli.main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
