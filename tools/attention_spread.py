"""The attention-spread check the parity fixture scripts share.

A fixture whose attention is nearly uniform cannot catch an error in the attention scale, so every
script measures, per attention layer, the row std of q.k/sqrt(d) and the entropy of the softmax
(divided by log(tokens): 1 = uniform), refuses fixtures with a std below 0.5, and records both."""
import torch


def summarise_attention(hooks, run, spread):
    """Runs `run()` without gradients (the forward `hooks` fill `spread[name] = (std, entropy)`),
    removes the hooks, refuses attention too uniform to test its scale, prints and returns the summary."""
    with torch.no_grad():
        run()
    for h in hooks:
        h.remove()
    assert all(std > 0.5 for std, _ in spread.values()), f"attention too uniform to test its scale: {spread}"
    spread = {name: f"q.k/sqrt(d) row std {std:.3f}, entropy / log(tokens) {ent:.3f}" for name, (std, ent) in spread.items()}
    print("\n".join(f"  {name}: {s}" for name, s in spread.items()))
    return spread
