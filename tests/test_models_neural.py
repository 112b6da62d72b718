"""The two sequence models (LSTM, Transformer): contract, learning, determinism, safety, point in time."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
from _frames import attainable_rank_ic, make_feature_frame, mean_rank_ic  # noqa: E402

from ensemble.models import create_model, get_model_class  # noqa: E402
from ensemble.models.base import ModelNotFittedError, UnsafeArtifactError  # noqa: E402
from ensemble.models.sequence import SequenceData  # noqa: E402

HORIZONS = (5, 20, 60)
PRED_COLS = [f"pred_h{h}" for h in HORIZONS]
N_DAYS, TRAIN_END, VALID_END = 300, 180, 220  # date indices: train [0,180), valid [180,220), test [220,300)
SMALL: dict[str, dict[str, object]] = {
    "lstm": {"hidden": 16, "attn_dim": 16, "lr": 1e-3},
    "transformer": {"d_model": 16, "nhead": 2, "layers": 1, "dim_feedforward": 32, "lr": 3e-3},
}
COMMON = {"seq_len": 20, "batch_size": 64, "max_epochs": 40, "patience": 6, "num_threads": 1, "seed": 0}
MODELS = list(SMALL)
SKILL_SHARE = 0.5  # a model must reach at least this share of the best Rank IC attainable on the test rows


def params(name: str, **over: object) -> dict[str, object]:
    return {**COMMON, **SMALL[name], **over}


def date_index(df: pd.DataFrame) -> np.ndarray:
    dates = np.sort(df["date"].unique())
    return np.searchsorted(dates, df["date"].to_numpy())


def split(df: pd.DataFrame, a: int, b: int) -> pd.DataFrame:
    """Rows with date index in [a, b); labels that would look at or past date b are purged (NaN)."""
    di = date_index(df)
    keep = (di >= a) & (di < b)
    part = df[keep].copy()
    for h in HORIZONS:
        part.loc[di[keep] + h >= b, f"target_h{h}"] = np.nan
    return part


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_feature_frame(n_tickers=10, n_days=N_DAYS, n_features=8, seed=0)


@pytest.fixture(scope="module")
def fitted(frame: pd.DataFrame) -> dict[str, object]:
    train, valid = split(frame, 0, TRAIN_END), split(frame, TRAIN_END, VALID_END)
    return {name: create_model(name, **params(name)).fit(train, valid) for name in MODELS}


def poison_after(frame: pd.DataFrame, cutoff_idx: int, rows: np.ndarray | None = None) -> pd.DataFrame:
    """Copy of ``frame`` whose feature rows (selected by ``rows``, default: dates after the cutoff) are x10, some NaN."""
    out = frame.copy()
    sel = date_index(frame) > cutoff_idx if rows is None else rows
    feats = [c for c in frame.columns if c.startswith("f")]
    out.loc[sel, feats] = out.loc[sel, feats].to_numpy() * 10.0
    nan_rows = np.flatnonzero(sel)[::3]
    out.loc[out.index[nan_rows], feats[:3]] = np.nan
    return out


# -- contract --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_registry_and_capabilities(name: str) -> None:
    cls = get_model_class(name)
    assert cls.name == name
    assert cls.uses_sequences and cls.supports_gpu and not cls.per_ticker
    with pytest.raises(TypeError, match="unknown parameters"):
        cls(hiden=3)
    with pytest.raises(ModelNotFittedError):
        cls().predict(make_feature_frame(n_tickers=2, n_days=30))


@pytest.mark.parametrize("name", MODELS)
def test_predict_only_some_dates_equals_the_full_predict(
    name: str, fitted: dict, frame: pd.DataFrame
) -> None:
    """``predict(frame, dates=...)`` (daily scoring: one window per ticker) gives the full predict's
    rows on those dates, in frame order, with their windows reading the earlier rows: exactly on the
    CPU; on CUDA (device ``auto`` on a GPU machine) to float32 rounding, since the GPU's kernels
    depend on the batch's shape (seen on an H200: differences of about 1e-8)."""
    model = fitted[name]
    full = model.predict(frame)
    days = sorted(frame["date"].unique())
    pick = [days[-1], days[len(days) // 2]]
    shuffled = frame.sample(frac=1.0, random_state=5)
    part = model.predict(shuffled, dates=pick)
    want = shuffled.loc[shuffled["date"].isin(pick), ["date", "ticker"]].reset_index(drop=True)
    assert part[["date", "ticker"]].equals(want)
    ref = full.set_index(["date", "ticker"]).loc[pd.MultiIndex.from_frame(want)]
    got, full_rows = part[PRED_COLS].to_numpy(), ref[PRED_COLS].to_numpy()
    if model.device_.type == "cpu":
        assert np.array_equal(got, full_rows)
    else:
        assert np.allclose(got, full_rows, rtol=1e-5, atol=1e-7), np.abs(got - full_rows).max()
    assert model.predict(frame, dates=[pd.Timestamp("1990-01-01")]).empty


@pytest.mark.parametrize("name", MODELS)
def test_predict_shape_keys_and_order(name: str, fitted: dict, frame: pd.DataFrame) -> None:
    model = fitted[name]
    pred = model.predict(frame)
    assert list(pred.columns) == ["date", "ticker", *PRED_COLS]
    assert len(pred) == len(frame)
    assert (pred["date"].to_numpy() == frame["date"].to_numpy()).all()
    assert (pred["ticker"].to_numpy() == frame["ticker"].to_numpy()).all()
    assert np.isfinite(pred[PRED_COLS].to_numpy()).all()
    # any input order: output follows it row by row, values unchanged
    shuffled = frame.sample(frac=1.0, random_state=3)
    pred_s = model.predict(shuffled)
    assert (pred_s["ticker"].to_numpy() == shuffled["ticker"].to_numpy()).all()
    assert (pred_s["date"].to_numpy() == shuffled["date"].to_numpy()).all()
    back = pred_s.set_index(["ticker", "date"]).loc[pd.MultiIndex.from_frame(frame[["ticker", "date"]])]
    assert np.array_equal(back[PRED_COLS].to_numpy(), pred[PRED_COLS].to_numpy())
    # fitted state and history
    assert model.n_epochs_ == len(model.history_) >= model.best_epoch_ >= 1
    assert all("valid_loss" in h for h in model.history_)
    with pytest.raises(ValueError, match="lacks feature columns"):
        model.predict(frame.drop(columns=["f3"]))
    with pytest.raises(ValueError, match="duplicate"):
        model.predict(pd.concat([frame.iloc[:5], frame.iloc[:1]]))


@pytest.mark.parametrize("name", MODELS)
def test_learns_planted_signal(name: str, fitted: dict, frame: pd.DataFrame) -> None:
    pred = fitted[name].predict(frame)  # the test dates get their history from the same frame
    test = (date_index(frame) >= VALID_END).nonzero()[0]
    best, source = attainable_rank_ic(frame.iloc[test], horizon=5)
    ic = mean_rank_ic(frame.iloc[test], pred["pred_h5"].to_numpy()[test], horizon=5)
    assert ic >= SKILL_SHARE * best, (
        f"{name}: mean Rank IC {ic:.3f} on the test dates, below {SKILL_SHARE:.0%} of the {best:.3f} "
        f"that {source} alone reaches on the same rows"
    )


# -- determinism and persistence -------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_predictions(name: str, fitted: dict, frame: pd.DataFrame) -> None:
    train, valid = split(frame, 0, TRAIN_END), split(frame, TRAIN_END, VALID_END)
    again = create_model(name, **params(name)).fit(train, valid)

    def losses(m: Any) -> list[dict[str, float]]:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in m.history_]

    assert losses(again) == losses(fitted[name])
    a = fitted[name].predict(frame)[PRED_COLS].to_numpy()
    b = again.predict(frame)[PRED_COLS].to_numpy()
    assert np.array_equal(a, b)
    # the caller's global RNG is not consumed or reseeded by fit
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    create_model(name, **params(name, max_epochs=1)).fit(train, valid)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", MODELS)
def test_save_load_identical(name: str, fitted: dict, frame: pd.DataFrame, tmp_path: Path) -> None:
    model = fitted[name]
    out = model.save(tmp_path / name)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "weights.safetensors"]
    loaded: Any = get_model_class(name).load(out)
    assert loaded.get_params() == {"horizons": list(HORIZONS), **model.resolved_params()}
    assert loaded.history_ == model.history_
    assert np.array_equal(
        loaded.predict(frame)[PRED_COLS].to_numpy(), model.predict(frame)[PRED_COLS].to_numpy()
    )
    other = "transformer" if name == "lstm" else "lstm"
    with pytest.raises(ValueError, match="holds model"):
        get_model_class(other).load(out)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("protocol", [pickle.HIGHEST_PROTOCOL, 0])
@pytest.mark.parametrize("name", MODELS)
def test_planted_pickle_refused(name: str, protocol: int, fitted: dict, tmp_path: Path) -> None:
    out = fitted[name].save(tmp_path / "model")
    marker = tmp_path / "pwned"
    (out / "weights.safetensors").write_bytes(pickle.dumps(_Exploit(marker), protocol=protocol))
    # protocol >= 2 is caught by refuse_pickles; protocol 0 passes that sniff but safetensors never unpickles
    with pytest.raises(UnsafeArtifactError if protocol >= 2 else Exception):
        get_model_class(name).load(out)
    assert not marker.exists()


# -- point in time ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_future_poisoning_leaves_past_predictions_bit_identical(
    name: str, fitted: dict, frame: pd.DataFrame
) -> None:
    model = fitted[name]  # fitted on dates < VALID_END only
    cutoff = VALID_END - 1
    clean = model.predict(frame)[PRED_COLS].to_numpy()
    dirty = model.predict(poison_after(frame, cutoff))[PRED_COLS].to_numpy()
    past = date_index(frame) <= cutoff
    assert np.array_equal(clean[past], dirty[past])
    assert not np.allclose(clean[~past], dirty[~past])  # the poison did reach the later rows


@pytest.mark.parametrize("name", MODELS)
def test_windows_never_cross_tickers(name: str, fitted: dict, frame: pd.DataFrame) -> None:
    model = fitted[name]
    clean = model.predict(frame)[PRED_COLS].to_numpy()
    is_a = (frame["ticker"] == "T004").to_numpy()
    dirty = model.predict(poison_after(frame, -1, rows=is_a))[PRED_COLS].to_numpy()
    assert np.array_equal(clean[~is_a], dirty[~is_a])
    assert not np.allclose(clean[is_a], dirty[is_a])


def test_lazy_windows_match_a_naive_construction() -> None:
    df = make_feature_frame(n_tickers=3, n_days=12, n_features=4, seed=5).drop(
        index=[14, 15]
    )  # a gap in T001
    df = df.sample(frac=1.0, random_state=0)  # any input order
    feats = [f"f{k}" for k in range(4)]
    L = 5
    data = SequenceData(df, feats, np.zeros(4), np.ones(4), seq_len=L, clip=None)
    x, pad = data.windows(torch.arange(data.n))
    srt = df.iloc[data.order]
    for i in range(data.n):
        tk, dt = srt["ticker"].iloc[i], srt["date"].iloc[i]
        own = df[(df["ticker"] == tk) & (df["date"] <= dt)].sort_values("date")[feats].to_numpy()[-L:]
        n_real = len(own)
        assert pad[i].tolist() == [True] * (L - n_real) + [False] * n_real
        assert np.array_equal(x[i, L - n_real :].numpy(), own.astype(np.float32))
        assert (x[i, : L - n_real] == 0).all()


# -- training control ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_early_stopping_on_internal_validation(name: str) -> None:
    df = make_feature_frame(n_tickers=6, n_days=200, seed=1)
    rng = np.random.default_rng(0)
    for h in HORIZONS:  # pure noise targets: the validation loss cannot keep improving
        df[f"target_h{h}"] = rng.permutation(df[f"target_h{h}"].to_numpy())
    model: Any = create_model(name, **params(name, max_epochs=50, patience=2, lr=1e-2)).fit(df)  # valid=None
    assert model.n_epochs_ < 50
    assert len(model.history_) == model.n_epochs_
    assert model.best_epoch_ == model.n_epochs_ - 2
    losses = [h["valid_loss"] for h in model.history_]
    assert min(losses) == losses[model.best_epoch_ - 1]


@pytest.mark.parametrize("name", MODELS)
def test_early_stopping_on_validation_rank_ic_keeps_the_epoch_that_ranked_best(
    name: str, frame: pd.DataFrame
) -> None:
    from ensemble.backtest.metrics import rank_ic

    train, valid = split(frame, 0, TRAIN_END), split(frame, TRAIN_END, VALID_END)
    p = params(name, max_epochs=10, patience=3, eval_metric="rank_ic")
    model: Any = create_model(name, **p).fit(train, valid)
    ics = [h["valid_rank_ic"] for h in model.history_]
    best, kept = -np.inf, 0  # the rule: an epoch is better when it beats the best by > min_delta
    for e, ic in enumerate(ics, start=1):
        if ic > best + 1e-4:
            best, kept = ic, e
    assert model.best_epoch_ == kept >= 1
    assert model.best_valid_loss_ == model.history_[model.best_epoch_ - 1]["valid_loss"]
    # the kept module is that epoch's: its forecasts of the validation rows rank them as recorded
    pred = model.predict(split(frame, 0, VALID_END))
    rows = pred.merge(valid, on=["date", "ticker"])
    d = rows["date"].to_numpy()
    by_hand = [
        rank_ic(d, rows[f"pred_h{h}"].to_numpy(), rows[f"target_h{h}"].to_numpy())
        for h in HORIZONS
        if rows[f"target_h{h}"].notna().any()
    ]
    assert float(np.mean(by_hand)) == pytest.approx(ics[kept - 1], abs=1e-3)
    # the loss watched instead: another rule, the same recorded losses
    by_loss: Any = create_model(name, **{**p, "eval_metric": "loss"}).fit(train, valid)
    losses = [h["valid_loss"] for h in by_loss.history_]
    assert min(losses) == losses[by_loss.best_epoch_ - 1] and "valid_rank_ic" not in by_loss.history_[0]
    with pytest.raises(ValueError, match="eval_metric"):
        create_model(name, **{**p, "eval_metric": "rmse"}).fit(train, valid)


@pytest.mark.parametrize("name", MODELS)
def test_refit_on_trains_a_fresh_module_for_the_best_epochs(
    name: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    """With ``refit_on``, the fit stops on ``valid`` as without it (its history kept), then a fresh
    module with the same seed trains on ``refit_on`` for the epochs up to the best one, with no
    validation: given the training rows themselves, the same as a plain fit of them for that many
    epochs (the same scalers, initial weights and batches); on more rows, another model."""
    train, valid = split(frame, 0, TRAIN_END), split(frame, TRAIN_END, VALID_END)
    p = params(name, max_epochs=8, patience=2)
    cls = get_model_class(name)
    assert cls.refits
    stopped: Any = cls(**p).fit(train, valid)
    model: Any = cls(**p).fit(train, valid, refit_on=train)
    losses = [(h["train_loss"], h["valid_loss"]) for h in model.history_]
    assert losses == [(h["train_loss"], h["valid_loss"]) for h in stopped.history_]
    assert model.best_epoch_ == stopped.best_epoch_ and model.n_epochs_ == stopped.n_epochs_
    assert model.best_valid_loss_ == stopped.best_valid_loss_
    assert model.refit_["epochs"] == max(1, stopped.best_epoch_)
    labelled = int(train[PRED_COLS[0].replace("pred", "target")].notna().sum())
    assert model.refit_["n_train_rows"] == model.refit_["stopped_n_train_rows"] >= labelled
    plain: Any = cls(**{**p, "max_epochs": model.refit_["epochs"], "valid_fraction": 0.0}).fit(train)
    assert np.array_equal(
        model.predict(frame)[PRED_COLS].to_numpy(), plain.predict(frame)[PRED_COLS].to_numpy()
    )
    whole = split(frame, 0, VALID_END)
    longer: Any = cls(**p).fit(train, valid, refit_on=whole)
    assert longer.refit_["n_train_rows"] > model.refit_["n_train_rows"]
    assert not np.array_equal(
        longer.predict(frame)[PRED_COLS].to_numpy(), model.predict(frame)[PRED_COLS].to_numpy()
    )
    loaded: Any = cls.load(longer.save(tmp_path))
    assert loaded.refit_ == longer.refit_ and loaded.history_ == longer.history_
    assert np.array_equal(
        loaded.predict(frame)[PRED_COLS].to_numpy(), longer.predict(frame)[PRED_COLS].to_numpy()
    )


def test_a_fit_resumed_from_the_epoch_that_stopped_it_trains_no_further(frame: pd.DataFrame) -> None:
    """A runner that fails after the epoch that stopped the fit (e.g. during the refit) resumes from
    that epoch's checkpoint: the resumed fit trains no further epoch and equals the uninterrupted one."""
    from ensemble.models.sequence import SequenceTrainingHooks

    class Keep(SequenceTrainingHooks):
        def __init__(self, resume: dict | None = None) -> None:
            self.resume, self.states = resume, []

        def resume_state(self) -> dict | None:
            return self.resume

        def on_iteration(self, model: object, it: Any) -> bool:
            self.states.append(it.state())
            return False

    train, valid = split(frame, 0, TRAIN_END), split(frame, TRAIN_END, VALID_END)
    p = params("lstm", max_epochs=30, patience=1, lr=3e-2)
    keep = Keep()
    first: Any = create_model("lstm", **p).fit(train, valid, callbacks=[keep])
    assert first.n_epochs_ < 30 and keep.states[-1]["stopped"]
    again = Keep(resume=keep.states[-1])
    resumed: Any = create_model("lstm", **p).fit(train, valid, callbacks=[again])
    assert again.states == [] and resumed.n_epochs_ == first.n_epochs_
    assert resumed.best_epoch_ == first.best_epoch_
    assert np.array_equal(
        resumed.predict(frame)[PRED_COLS].to_numpy(), first.predict(frame)[PRED_COLS].to_numpy()
    )
    # a checkpoint that stopped on the loss is not resumed by a fit that watches the Rank IC
    with pytest.raises(ValueError, match="eval_metric"):
        create_model("lstm", **{**p, "eval_metric": "rank_ic"}).fit(
            train, valid, callbacks=[Keep(resume=keep.states[-1])]
        )


def test_lstm_attention_weights(fitted: dict, frame: pd.DataFrame) -> None:
    model = fitted["lstm"]
    att = model.attention(frame)
    lag_cols = [f"attn_lag{k}" for k in range(model.resolved_params()["seq_len"])]
    assert list(att.columns) == ["date", "ticker", *lag_cols]
    w = att[lag_cols].to_numpy()
    assert np.allclose(w.sum(axis=1), 1.0, atol=1e-5)
    assert (w >= 0).all()
    first = date_index(frame) == 0  # a ticker's first row: only its own date is a real step
    assert np.allclose(w[first, 0], 1.0) and (w[first, 1:] == 0).all()
    third = date_index(frame) == 2
    assert (w[third, 3:] == 0).all() and (w[third, :3] > 0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("name", MODELS)
def test_cuda_fit_predict(name: str, frame: pd.DataFrame, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    train = split(frame, 0, TRAIN_END)
    model: Any = create_model(name, **params(name, max_epochs=3, device="auto")).fit(train)
    assert model.device_.type == "cuda"
    pred = model.predict(frame)[PRED_COLS].to_numpy()
    assert np.isfinite(pred).all()
    again = create_model(name, **params(name, max_epochs=3, device="auto")).fit(train)
    assert np.array_equal(again.predict(frame)[PRED_COLS].to_numpy(), pred)
    loaded = get_model_class(name).load(model.save(tmp_path / name))
    assert np.array_equal(loaded.predict(frame)[PRED_COLS].to_numpy(), pred)


def test_transformer_last_step_readout_equals_the_full_encoder() -> None:
    """'last' pooling runs the final layer for the last step only: the same output as the whole
    nn.TransformerEncoder read at that step (same parameters), padded windows included, and the
    gradients reach the same parameters."""
    import torch

    from ensemble.models.transformer import WindowTransformer

    torch.manual_seed(3)
    net = WindowTransformer(7, 2, seq_len=12, d_model=16, nhead=4, layers=3, dim_feedforward=32,
                            dropout=0.1, pooling="last").eval()  # fmt: skip
    x = torch.randn(9, 12, 7)
    pad = torch.zeros(9, 12, dtype=torch.bool)
    pad[:4, :5] = True  # left-padded windows, as a ticker's first dates have
    with torch.no_grad():
        fast = net(x, pad)
        h = net.dropout(net.pos(net.input_proj(x)))
        full = net.norm(net.encoder(h, src_key_padding_mask=pad))[:, -1, :]
        ref = torch.cat([head(full) for head in net.heads], dim=1)
    assert torch.allclose(fast, ref, atol=1e-5), (fast - ref).abs().max()
    net.train()
    net(x, pad).sum().backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert unused == [], unused
