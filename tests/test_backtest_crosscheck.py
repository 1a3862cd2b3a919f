"""Independent cross-check: an MA crossover through research.backtest vs backtesting.py and backtrader.

Same bars (one week of a gappy ETF from the synthetic sample: missing minutes are dropped, so
"next bar" means the symbol's next real bar in every engine), next-open fills, same fees. The
peers differ in conventions, so each case uses what both engines can express exactly:
- backtesting.py applies its spread on entries only, so it runs without slippage (all-in sizing with
  per-share fees, and fixed size with per-share plus per-order fees). Its all-in is a fraction
  just under 1 of equity, which rounds one share lower when cash is an exact multiple of the
  price (easy with cent prices and round fees), so the per-share fee is an odd 0.37 cents;
- backtrader slips both sides (slip_open, slip_out), so it runs with slippage and fixed size
  (its sizers decide at the signal bar's close, ours at the fill). It reads the MAs as data lines:
  its SMA (math.fsum) and pandas' rolling mean differ in the last bit on exact ties.
"""

from __future__ import annotations

import warnings

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
from backtesting import Backtest
from backtesting import Strategy as BtpStrategy

from data.bars import Panel
from data.sample import generate_panel
from research.backtest import backtest
from strategies.signal import MACrossStrategy, SignalParams

pytestmark = pytest.mark.filterwarnings("ignore:DatetimeIndex.dayofweek is deprecated")

SYMBOL = "SOXS"
FAST, SLOW = 5, 20
CASH = 10_000.0


@pytest.fixture(scope="module")
def panel() -> Panel:
    p = generate_panel("2024-10-21", "2024-10-25", symbols=(SYMBOL,))
    assert np.isnan(p.close).any(), "the cross-check wants missing minutes in the data"
    return p


def _bars(panel: Panel) -> pd.DataFrame:
    df = panel.bars(SYMBOL)[["open", "high", "low", "close", "volume"]]
    df.index = df.index.tz_convert("UTC").tz_localize(None)
    return df


class _BtpCross(BtpStrategy):
    fast = FAST
    slow = SLOW
    size = 0.0

    def init(self) -> None:
        sma = lambda x, n: pd.Series(x).rolling(n).mean().to_numpy()  # noqa: E731
        self.f = self.I(sma, self.data.Close, self.fast)
        self.s = self.I(sma, self.data.Close, self.slow)

    def next(self) -> None:
        f, s = self.f, self.s
        if not self.position and f[-1] > s[-1] and f[-2] <= s[-2]:
            self.buy(size=self.size or 1 - 1e-9)
        elif self.position and s[-1] > f[-1] and s[-2] <= f[-2]:
            self.position.close()


@pytest.mark.parametrize(
    ("size", "fee_per_share", "fee_per_order"), [(None, 0.0037, 0.0), (25, 0.005, 1.0)], ids=["all_in", "fixed_size"]
)
def test_ma_cross_matches_backtesting_py(panel: Panel, size: int | None, fee_per_share: float, fee_per_order: float) -> None:
    params = SignalParams(fast=FAST, slow=SLOW, fee_per_share=fee_per_share, fee_per_order=fee_per_order, size=size)
    ours = backtest(MACrossStrategy(params), panel, params, init_cash=CASH)
    peer = Backtest(
        _bars(panel).rename(columns=str.capitalize), _BtpCross, cash=CASH,
        commission=lambda q, p: abs(q) * fee_per_share + fee_per_order, trade_on_close=False, finalize_trades=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some trades remain open", category=UserWarning)
        peer = peer.run(size=size or 0.0)
    theirs = peer["_trades"]  # closed trades only (finalize_trades=False); open ones count in equity
    mine = ours.trades[~ours.trades["is_open"]].reset_index(drop=True)
    assert len(theirs) > 10 and len(mine) == len(theirs)
    np.testing.assert_array_equal(mine["entry_time"].dt.tz_localize(None).to_numpy(), theirs["EntryTime"].to_numpy())
    np.testing.assert_array_equal(mine["exit_time"].dt.tz_localize(None).to_numpy(), theirs["ExitTime"].to_numpy())
    np.testing.assert_array_equal(mine["qty"].to_numpy(), theirs["Size"].to_numpy())
    np.testing.assert_allclose(mine["entry_price"], theirs["EntryPrice"], rtol=1e-12)
    np.testing.assert_allclose(mine["exit_price"], theirs["ExitPrice"], rtol=1e-12)
    np.testing.assert_allclose(mine["pnl"], theirs["PnL"], atol=0.01)
    assert abs(ours.metrics["final_equity"] - peer["Equity Final [$]"]) <= 0.01 * len(theirs)


class _PerShareAndOrder(bt.CommInfoBase):
    params = (("stocklike", True), ("commtype", bt.CommInfoBase.COMM_FIXED), ("fps", 0.0), ("fpo", 0.0))

    def _getcommission(self, size: float, price: float, pseudoexec: bool) -> float:
        return abs(size) * self.p.fps + self.p.fpo


class _WithMAs(bt.feeds.PandasData):
    """Bars plus the two MAs as extra lines (pandas rolling means, computed in this test)."""

    lines = ("fast", "slow")
    params = (("fast", -1), ("slow", -1))


class _BtCross(bt.Strategy):
    params = (("size", 25),)

    def __init__(self) -> None:
        self.f, self.s = self.data.fast, self.data.slow
        self.fills: list[tuple] = []

    def notify_order(self, order: bt.Order) -> None:
        if order.status == order.Completed:
            ex = order.executed
            self.fills.append((bt.num2date(ex.dt), 1 if order.isbuy() else -1, abs(ex.size), ex.price, ex.comm))

    def next(self) -> None:
        if len(self) < 2 or np.isnan(self.s[-1]):
            return
        if not self.position and self.f[0] > self.s[0] and self.f[-1] <= self.s[-1]:
            self.buy(size=self.p.size)
        elif self.position and self.s[0] > self.f[0] and self.s[-1] <= self.f[-1]:
            self.close()


def test_ma_cross_with_slippage_matches_backtrader(panel: Panel) -> None:
    slip, fps, fpo, size = 0.0005, 0.005, 1.0, 25
    params = SignalParams(fast=FAST, slow=SLOW, slippage=slip, fee_per_share=fps, fee_per_order=fpo, size=size)
    ours = backtest(MACrossStrategy(params), panel, params, init_cash=CASH)
    cerebro = bt.Cerebro(stdstats=False)
    # backtrader's own SMA sums with math.fsum, pandas with compensated running sums: on exact ties
    # (flat prices) they differ in the last bit, so both engines get the same MA values here
    df = _bars(panel)
    df["fast"], df["slow"] = df["close"].rolling(FAST).mean(), df["close"].rolling(SLOW).mean()
    cerebro.adddata(_WithMAs(dataname=df))
    cerebro.addstrategy(_BtCross, size=size)
    cerebro.broker.setcash(CASH)
    cerebro.broker.set_slippage_perc(slip, slip_open=True, slip_limit=True, slip_match=True, slip_out=True)
    cerebro.broker.addcommissioninfo(_PerShareAndOrder(fps=fps, fpo=fpo))
    strat = cerebro.run()[0]
    fills = pd.DataFrame(strat.fills, columns=["time", "side", "qty", "price", "fees"])
    o = ours.orders
    assert len(o) > 20 and len(o) == len(fills)
    np.testing.assert_array_equal(o["time"].dt.tz_localize(None).to_numpy(), fills["time"].to_numpy())
    np.testing.assert_array_equal(np.where(o["side"] == "buy", 1, -1), fills["side"].to_numpy())
    np.testing.assert_array_equal(o["qty"].to_numpy(), fills["qty"].to_numpy())
    np.testing.assert_allclose(o["price"].to_numpy(), fills["price"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(o["fees"].to_numpy(), fills["fees"].to_numpy(), atol=1e-9)
    assert abs(ours.metrics["final_equity"] - cerebro.broker.getvalue()) <= 0.01 * len(fills)
