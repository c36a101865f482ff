"""Shared by the Stable-Baselines3 benchmarks: SB3's finished episodes into an rlnotes ``History``,
so that both sides of a benchmark measure "mean return of the last 20 episodes" the same way."""

from rlnotes.trainer import History


def episode_recorder(threshold: float, window: int = 20):
    """An SB3 callback that records every finished episode (``info["episode"]`` from SB3's
    Monitor) in ``.history`` and stops training once the mean of the last ``window`` returns
    reaches ``threshold``."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Record(BaseCallback):
        def __init__(self):
            super().__init__()
            self.history = History()

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.history.add_episode(self.num_timesteps, info["episode"]["r"])
            return self.history.steps_to_reach(threshold, window) == float("inf")

    return Record()
