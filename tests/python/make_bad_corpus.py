"""Generates a dataset of hostile and odd inputs, at test time (no binary fixture is committed).

Usage: make_bad_corpus.py FIXTURE_DIR OUT_DIR

FIXTURE_DIR is a folder-per-identity dataset of real faces (../shared/datasets/fixture_facescrub12x10).
OUT_DIR gets:
  dataset/       identity folders: real faces re-saved in every format, orientation and mode
                 people have, and one folder (`odd`) of broken, hostile and strange entries
  outside.jpg    a picture outside the dataset, that a symlink points to
  manifest.csv   (inside dataset/) rows that are missing, repeated, quoted, empty, absolute, `../`
  expected.json  for every entry: "ok", "error" or "skip" (hidden or outside any identity folder);
                 and for the manifest run: its keys with their expected status

Keys are written as cloakbench writes them: `/`-separated, bytes that are not UTF-8 as `\\xNN`.
"""
import io
import json
import os
import pathlib
import random
import struct
import sys
import zlib

import numpy as np

from PIL import Image

rng = random.Random(20261201)


def key_of(raw: bytes) -> str:
    out = []
    text = raw.decode("utf-8", errors="surrogateescape")
    for ch in text:
        code = ord(ch)
        out.append(f"\\x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else ch)
    return "".join(out)


def jpeg(img, **kw):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def png(img, **kw):
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def encoded(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width, height, idat=b"\x78\x01\x01\x01\x00\xfe\xff\x00\x00\x01\x00\x01"):
    """A PNG whose header claims width x height pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_claiming(data: bytes, width, height):
    """A real JPEG with its frame header rewritten to claim width x height."""
    out = bytearray(data)
    i = 2
    while i < len(out):
        marker, length = out[i + 1], struct.unpack(">H", out[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            out[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(out)
        i += 2 + length
    raise ValueError("no frame header")


def with_comment_eoi(data: bytes) -> bytes:
    """A JPEG with a comment holding the end-of-image bytes, right after its start marker."""
    return data[:2] + b"\xff\xfe\x00\x06xx\xff\xd9" + data[2:]


def with_exif_orientation(upright, orientation):
    """The picture stored so that a viewer applying EXIF `orientation` shows it upright."""
    undo = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_270}
    stored = upright.transpose(undo[orientation]) if orientation in undo else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(stored, exif=exif.tobytes())


def main():
    fixture, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    data = out / "dataset"
    data.mkdir(parents=True)
    expected = {}
    faces = {p.name: sorted(p.iterdir()) for p in sorted(fixture.iterdir()) if p.is_dir()}

    def put(rel: bytes, content: bytes, status: str):
        path = data / os.fsdecode(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        expected[key_of(rel)] = status

    def face(identity, i):
        return Image.open(faces[identity][i]).convert("RGB")

    # Plain identities, as they are.
    for identity in ["Alec_Baldwin", "Angie_Harmon", "Steve_Carell"]:
        for p in faces[identity]:
            put(f"{identity}/{p.name}".encode(), p.read_bytes(), "ok")
    # The protected user: real faces in the formats and modes people have.
    bill = [face("Bill_Hader", i) for i in range(7)]
    frames = [bill[1], bill[2].transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    variants = {
        "gif.gif": encoded(bill[0], "GIF"),
        "animated.gif": buf.getvalue(),
        "tiff.tif": encoded(bill[2], "TIFF"),
        "webp.webp": encoded(bill[3], "WEBP", quality=90),
        "bmp.bmp": encoded(bill[4], "BMP"),
        "cmyk.jpg": jpeg(bill[5].convert("CMYK")),
        "sixteen_bit.png": png(Image.fromarray(np.asarray(bill[6].convert("L"), dtype=np.uint16) * 257)),
    }
    for name, content in variants.items():
        put(f"Bill_Hader/{name}".encode(), content, "ok")
    # Another identity: every EXIF orientation, greyscale, palette and RGBA.
    for o in range(1, 9):
        put(f"America_Ferrera/orientation_{o}.jpg".encode(), with_exif_orientation(face("America_Ferrera", o - 1), o), "ok")
    put(b"America_Ferrera/grey.jpg", jpeg(face("America_Ferrera", 8).convert("L")), "ok")
    put(b"America_Ferrera/palette.png", png(face("America_Ferrera", 9).convert("P", palette=Image.Palette.ADAPTIVE)), "ok")
    rgba = face("Alec_Baldwin", 0).convert("RGBA")
    rgba.putalpha(200)
    put(b"America_Ferrera/rgba.png", png(rgba), "ok")

    # The odd folder: broken, hostile and strange entries.
    good = faces["Steve_Carell"][0].read_bytes()
    good_png = png(Image.open(faces["Steve_Carell"][1]).convert("RGB"))
    for cut in (0.1, 0.5, 0.9):
        put(f"odd/truncated_{int(cut * 100)}.jpg".encode(), good[:int(len(good) * cut)], "error")
        put(f"odd/truncated_{int(cut * 100)}.png".encode(), good_png[:int(len(good_png) * cut)], "error")
    put(b"odd/truncated_before_eoi.jpg", good[:-2], "error")
    put(b"odd/truncated_eoi_in_comment.jpg", with_comment_eoi(good)[:-200], "error")
    put(b"odd/truncated_header.png", good_png[:20], "error")
    bad_crc = bytearray(good_png)
    bad_crc[29] ^= 0xFF  # the IHDR chunk's CRC
    put(b"odd/bad_crc.png", bytes(bad_crc), "error")
    put(b"odd/zero_bytes.jpg", b"", "error")
    put(b"odd/random_bytes.jpg", bytes(rng.getrandbits(8) for _ in range(5000)), "error")
    put(b"odd/text.png", b"I am a text file with a picture's name\n", "error")
    put(b"odd/bomb_header.png", png_claiming(30000, 30000), "error")
    put(b"odd/bomb_header.jpg", jpeg_claiming(good, 60000, 60000), "error")
    # A small file that would inflate to 432 MB: 12000 x 12000 black pixels compress to ~0.4 MB.
    put(b"odd/bomb_inflate.png", png(Image.new("L", (12000, 12000))), "error")
    put(b"odd/phone.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(2000), "error")
    put(b"odd/one_pixel.png", png(Image.new("RGB", (1, 1), (200, 10, 10))), "ok")
    put(b"odd/tall_1x5000.png", png(Image.new("RGB", (1, 5000), (90, 90, 90))), "ok")
    put(b"odd/no_face.png", png(Image.new("RGB", (320, 240), (128, 128, 128))), "ok")
    noise = Image.frombytes("RGB", (600, 400), bytes(rng.getrandbits(8) for _ in range(600 * 400 * 3)))
    put(b"odd/large_6000x4000.jpg", jpeg(noise.resize((6000, 4000))), "ok")
    put(b"odd/faceless_animated.gif", encoded(Image.new("RGB", (64, 64)), "GIF", save_all=True,
                                             append_images=[Image.new("RGB", (64, 64), (255, 0, 0))]), "ok")
    put(b"odd/folder.jpg/inside.jpg", faces["Steve_Carell"][2].read_bytes(), "ok")
    put(b"odd/name with spaces.jpg", faces["Steve_Carell"][3].read_bytes(), "ok")
    put(b"odd/-leading-dash.jpg", faces["Steve_Carell"][4].read_bytes(), "ok")
    put(b"odd/new\nline.jpg", faces["Steve_Carell"][5].read_bytes(), "ok")
    put("odd/ünïcødé 名前.jpg".encode(), faces["Steve_Carell"][6].read_bytes(), "ok")
    put(b"odd/a,b.jpg", faces["Steve_Carell"][7].read_bytes(), "ok")
    put(b"odd/not_utf8_\xff\xfe.jpg", faces["Steve_Carell"][8].read_bytes(), "error")
    put(b"odd/.hidden.jpg", good, "skip")
    put(b"root_file.jpg", good, "skip")
    put(b".hidden_identity/face.jpg", good, "skip")
    put(b"\xff\xfeidentity/face.jpg", good, "error")
    del expected[key_of(b"\xff\xfeidentity/face.jpg")]
    expected[key_of(b"\xff\xfeidentity")] = "error"  # a folder whose name is not UTF-8: one row
    (data / "empty_identity").mkdir()
    (data / "empty_identity" / "empty_folder.jpg").mkdir()

    # Links and special files.
    (out / "outside.jpg").write_bytes(good)
    links = {
        "odd/link_to_picture.jpg": ("../Alec_Baldwin/" + faces["Alec_Baldwin"][0].name, "ok"),
        "odd/link_outside.jpg": (str(out / "outside.jpg"), "error"),
        "odd/dangling.jpg": ("does_not_exist.jpg", "error"),
        "odd/loop.jpg": ("loop.jpg", "error"),
        "odd/cycle": (".", "error"),
    }
    for rel, (target, status) in links.items():
        os.symlink(target, data / rel)
        expected[rel] = status
    os.mkfifo(data / "odd/fifo.jpg")
    expected["odd/fifo.jpg"] = "error"

    # A manifest over the same folder.
    alec = faces["Alec_Baldwin"]
    rows = [
        ("path", "identity"),
        (f"Alec_Baldwin/{alec[0].name}", "Alec_Baldwin"),
        (f"Alec_Baldwin/{alec[1].name}", "Alec_Baldwin"),
        (f"Alec_Baldwin/{alec[1].name}", "Alec_Baldwin"),  # repeated
        ("odd/a,b.jpg", "Steve_Carell"),  # a quoted comma
        ("missing/file.jpg", "Nobody"),
        (f"Alec_Baldwin/{alec[2].name}", ""),  # empty identity
        ("/etc/hostname", "Root"),
        ("../outside.jpg", "Escaper"),
        ("odd/link_outside.jpg", "Escaper"),
    ]
    buf = io.StringIO()
    import csv
    csv.writer(buf).writerows(rows)
    (data / "manifest.csv").write_text(buf.getvalue())
    expected["manifest.csv"] = "skip"  # a file at the root: not in an identity folder
    manifest_expected = {f"Alec_Baldwin/{alec[0].name}": ["ok"], f"Alec_Baldwin/{alec[1].name}": ["ok", "error"],
                         "odd/a,b.jpg": ["ok"], "missing/file.jpg": ["error"], f"Alec_Baldwin/{alec[2].name}": ["error"],
                         "/etc/hostname": ["error"], "../outside.jpg": ["error"], "odd/link_outside.jpg": ["error"]}
    (out / "expected.json").write_text(json.dumps({"folders": expected, "manifest": manifest_expected}, indent=1, ensure_ascii=False))
    print(json.dumps({"entries": len(expected), "errors": sum(v == "error" for v in expected.values()),
                      "skips": sum(v == "skip" for v in expected.values())}))


if __name__ == "__main__":
    main()
