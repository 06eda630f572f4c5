"""What a sweep prints: the summary's top configurations, best first, and the result files."""

from jaxae import console


def test_the_summary_lists_completed_trials_best_first_with_the_settings_that_vary(tmp_path,
                                                                                  capsys):
    class Store:
        def trials(self):
            params = [{"learning_rate": lr, "hidden": 16} for lr in (0.01, 0.002, 0.003)]
            return [
                {"trial_id": 0, "status": "completed", "val_loss": 0.5, "steps": 30,
                 "params": params[0]},
                {"trial_id": 1, "status": "pruned", "val_loss": 0.1, "steps": 10,
                 "params": params[1]},
                {"trial_id": 2, "status": "completed", "val_loss": 0.3, "steps": 30,
                 "params": params[2]},
            ]

    console.print_summary(Store(), tmp_path, {"trial_id": 2}, 1.25)
    out = capsys.readouterr().out
    assert "3 trials in 1.2 s: 2 completed, 1 pruned" in out
    table = out.split("top configurations:\n")[1].splitlines()
    assert table[0].split() == ["trial", "val_loss", "learning_rate"]  # hidden never varies
    assert [r.split()[0] for r in table[1:3]] == ["2", "0"]  # completed only, best first
    assert str(tmp_path / "trials.db") in out
