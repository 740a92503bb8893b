#include "format.h"

#include <QLocale>
#include <QStringList>

#include <cmath>

namespace human {

QString bytes(std::uint64_t bytes)
{
    static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = double(bytes);
    int unit = 0;
    while (v >= 1024.0 && unit < 4) {
        v /= 1024.0;
        ++unit;
    }
    if (unit == 0) return QStringLiteral("%1 B").arg(bytes);
    return QStringLiteral("%1 %2").arg(v, 0, 'f', v < 10 ? 2 : v < 100 ? 1 : 0).arg(units[unit]);
}

QString count(std::int64_t n)
{
    const double a = std::abs(double(n));
    if (a >= 1e9) return QStringLiteral("%1 B").arg(double(n) / 1e9, 0, 'f', 2);
    if (a >= 1e6) return QStringLiteral("%1 M").arg(double(n) / 1e6, 0, 'f', 1);
    if (a >= 1e4) return QStringLiteral("%1 K").arg(double(n) / 1e3, 0, 'f', 1);
    return QString::number(n);
}

QString shape(const std::vector<std::int64_t>& shape)
{
    QStringList parts;
    for (auto d : shape) parts << QString::number(d);
    return parts.isEmpty() ? QStringLiteral("scalar") : parts.join(QStringLiteral(" × "));
}

QString number(double value, int precision)
{
    if (std::isnan(value)) return QStringLiteral("NaN");
    if (std::isinf(value)) return value > 0 ? QStringLiteral("+inf") : QStringLiteral("-inf");
    return QString::number(value, 'g', precision);
}

QString percent(double share, int precision)
{
    return QStringLiteral("%1 %").arg(QString::number(share * 100.0, 'g', precision));
}

}  // namespace human
