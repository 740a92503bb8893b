#include "icons.h"

#include <QApplication>
#include <QImageReader>
#include <QPainter>
#include <QPainterPath>
#include <QPixmap>
#include <QStyle>

namespace icons {
namespace {

bool svgSupported()
{
    static const bool supported = QImageReader::supportedImageFormats().contains("svg");
    return supported;
}

QIcon fromSvgOr(const char* resource, QStyle::StandardPixmap fallback)
{
    if (svgSupported()) return QIcon(QString::fromLatin1(resource));
    return QApplication::style()->standardIcon(fallback);
}

// resources/desktop/io.github.quantlens.QuantLens.svg, painted on a 128-unit canvas.
QPixmap paintAppIcon(int size)
{
    QPixmap pixmap(size, size);
    pixmap.fill(Qt::transparent);
    QPainter p(&pixmap);
    p.setRenderHint(QPainter::Antialiasing);
    p.scale(size / 128.0, size / 128.0);
    p.setPen(Qt::NoPen);
    p.setBrush(QColor(0x1f, 0x2a, 0x44));
    p.drawRoundedRect(QRectF(4, 4, 120, 120), 24, 24);
    p.setBrush(QColor(0x5b, 0x9b, 0xd5));
    const int heights[] = {26, 42, 64, 76, 64, 42, 26};
    for (int i = 0; i < 7; ++i) p.drawRect(QRectF(20 + 12 * i, 104 - heights[i], 10, heights[i]));
    QPen grid(QColor(0xf4, 0xb9, 0x42), 3);
    grid.setDashPattern({4.0 / 3, 4.0 / 3});
    p.setPen(grid);
    for (int y : {92, 70, 48, 26}) p.drawLine(QPointF(18, y), QPointF(110, y));
    p.setBrush(Qt::NoBrush);
    p.setPen(QPen(Qt::white, 6));
    p.drawEllipse(QPointF(86, 44), 22, 22);
    p.setPen(QPen(Qt::white, 8, Qt::SolidLine, Qt::RoundCap));
    p.drawLine(QPointF(102, 60), QPointF(116, 74));
    return pixmap;
}

}  // namespace

QIcon app()
{
    if (svgSupported()) return QIcon(QStringLiteral(":/icons/quantlens.svg"));
    QIcon icon;
    for (int size : {16, 24, 32, 48, 64, 128, 256}) icon.addPixmap(paintAppIcon(size));
    return icon;
}

QIcon openModel()
{
    return fromSvgOr(":/icons/open-model.svg", QStyle::SP_DialogOpenButton);
}

QIcon openFolder()
{
    return fromSvgOr(":/icons/open-folder.svg", QStyle::SP_DirOpenIcon);
}

QIcon resetView()
{
    return fromSvgOr(":/icons/reset-view.svg", QStyle::SP_BrowserReload);
}

QIcon cancel()
{
    return fromSvgOr(":/icons/cancel.svg", QStyle::SP_BrowserStop);
}

}  // namespace icons
