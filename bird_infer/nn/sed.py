"""The SED model of the reference recipe: timm backbone + attention pooling over time.

Input is the log-mel (batch, n_mels, frames), never the waveform: the front-end lives outside the
model so that inference can compute it once in numpy and share it across folds.

    log-mel -> BatchNorm over mel bands -> timm backbone (features only) -> mean over frequency
    -> max_pool1d(3) + avg_pool1d(3) over time -> dropout -> fc + ReLU -> dropout
    -> attention block: softmax over time of tanh(1x1 conv)  x  sigmoid(1x1 conv)
    -> clipwise (batch, n_labels) and segmentwise (batch, n_labels, segments)
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from bird_infer.contract.schema import ModelConfig


class AttentionBlock(nn.Module):
    """Attention pooling over time: clip score = sum_t softmax_t(tanh(att)) * sigmoid(cla)."""

    def __init__(self, in_features: int, n_labels: int) -> None:
        super().__init__()
        self.att = nn.Conv1d(in_features, n_labels, kernel_size=1)
        self.cla = nn.Conv1d(in_features, n_labels, kernel_size=1)
        for conv in (self.att, self.cla):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (batch, features, time) -> clipwise (batch, n_labels), segmentwise (batch, n_labels, time)."""
        norm_att = torch.softmax(torch.tanh(self.att(x)), dim=-1)
        segmentwise = torch.sigmoid(self.cla(x))
        clipwise = torch.sum(norm_att * segmentwise, dim=2)
        return clipwise, segmentwise


class SEDModel(nn.Module):
    """Sound event detection model; ``forward`` returns (clipwise, segmentwise) probabilities."""

    def __init__(self, backbone: str, n_mels: int, n_labels: int, in_chans: int = 1, dropout: float = 0.5) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.dropout = dropout
        self.bn0 = nn.BatchNorm2d(n_mels)
        # pretrained=False: bird_infer never downloads weights; load a checkpoint instead.
        self.encoder = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans)
        n_features = self.encoder.num_features
        self.fc1 = nn.Linear(n_features, n_features)
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)
        self.att_block = AttentionBlock(n_features, n_labels)

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logmel (batch, n_mels, frames) float32 -> clipwise (batch, L), segmentwise (batch, L, segments)."""
        x = self.bn0(logmel.unsqueeze(-1)).squeeze(-1)  # normalise each mel band: (batch, n_mels, frames)
        x = x.unsqueeze(1)  # (batch, 1, n_mels, frames): mel is the image height, time its width
        if self.in_chans > 1:
            x = x.expand(-1, self.in_chans, -1, -1)
        x = self.encoder.forward_features(x)  # (batch, features, mel', time')
        x = torch.mean(x, dim=2)  # (batch, features, time')
        x = F.max_pool1d(x, kernel_size=3, stride=1, padding=1) + F.avg_pool1d(x, kernel_size=3, stride=1, padding=1)
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = F.relu(self.fc1(x.transpose(1, 2))).transpose(1, 2)
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.att_block(x)


def build_model(cfg: ModelConfig, n_mels: int, n_labels: int) -> SEDModel:
    """Build the SED model a manifest's ``model`` section describes (weights freshly initialised)."""
    if cfg.architecture != "sed":
        raise ValueError(f"unknown architecture {cfg.architecture!r}; bird_infer builds 'sed'")
    return SEDModel(cfg.backbone, n_mels=n_mels, n_labels=n_labels, in_chans=cfg.in_chans, dropout=cfg.dropout)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running statistics on ``batches`` of model inputs.

    Seeded-random and freshly initialised networks give near-constant outputs (timm's default
    initialisation made an efficientnet_b0 SED vary by ~2e-7 across inputs); statistics taken from
    real audio make them respond to their input, so parity tests can fail when they should.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    model.train()
    for batch in batches:
        model(batch)
    model.train(was_training)
    for bn in bns:
        bn.momentum = 0.1
