"""``TrainPanel.for_trainer`` with TRL's ``SFTTrainer`` (as documented): live points, Stop with a checkpoint, Resume.

``trl`` is in the ``test`` extra (pyproject.toml), so CI runs this; without it the test says why it skips.
"""

from __future__ import annotations

import math

import datasets
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("trl", reason="TRL is not installed: pip install 'nbft[test]' (or pip install trl)")

from nbft.models import tiny_random
from nbft.widgets import TrainPanel


def test_train_panel_drives_trl_sft_trainer_with_stop_and_resume(tmp_path):
    from trl import SFTConfig, SFTTrainer

    model, tok = tiny_random("llama")
    # nbft's own format (prompt → completion) is TRL's prompt-completion format: the loss on completions only
    rows = [{"prompt": f"Repeat the number {i}.\n", "completion": f"{i}"} for i in range(32)]
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"), max_steps=6, per_device_train_batch_size=4, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, max_length=64, completion_only_loss=True,
        disable_tqdm=False,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    panel: TrainPanel

    class ClickStop:
        def __init__(self) -> None:
            self.armed = True

        def on_step(self, state):
            if self.armed and state.step == 2:
                self.armed = False
                panel.stop_button.click()

    panel = TrainPanel.for_trainer(trainer, observers=[ClickStop()])
    assert not panel.train_button.disabled
    panel.train_button.click()
    run = panel.wait(180)
    assert run.status == "stopped"
    assert [p.name for p in run.checkpoints] == ["checkpoint-2"], "Stop saves a checkpoint"
    panel.resume_button.click()
    resumed = panel.wait(180)
    assert resumed.status == "completed"
    train = [h for h in panel.plot.history if h["kind"] == "train"]
    assert [h["step"] for h in train] == [1, 2, 3, 4, 5, 6], "one point per step, continued after Resume"
    assert all(math.isfinite(h["loss"]) for h in train)
    assert panel.plot.image.value, "the live plot drew the SFT run"
