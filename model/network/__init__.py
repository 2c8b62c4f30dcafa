"""The SQUID network in torch (training and export only; serving never imports this)."""

from model.network.discriminator import Discriminator
from model.network.squid import SquidGenerator, SquidOutput

__all__ = ["Discriminator", "SquidGenerator", "SquidOutput"]
