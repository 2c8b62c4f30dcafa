"""The HTTP status of every image rejection lives in the service, not in the imaging contract."""

from __future__ import annotations

from model.imaging import ImageRejected, Reason
from service.errors import IMAGE_STATUS, image_status


def test_every_reason_has_its_status() -> None:
    assert {reason.value: IMAGE_STATUS[reason.value] for reason in Reason} == {
        "unsupported_format": 415,
        "no_pixel_data": 422,
        "out_of_domain": 422,
        "undecodable": 422,
        "image_too_large": 422,
        "empty_image": 422,
    }
    assert image_status(ImageRejected("out_of_domain", "x")) == 422
